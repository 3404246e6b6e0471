"""Models behind the backend: answer generation, the reward model, training and data conversion.

Nothing here imports `backend`: these modules work from a plain script or notebook too.
"""
