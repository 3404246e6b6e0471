"""The work the RQ workers do, one module per job: `generate` (answers for new tasks), `train` (sync the
annotations, train a reward-model version), `refresh` (every unlabelled task's prediction for the current
version), `report` (the collection-quality page) and `maintenance` (webhook auth, the start-up sweep).
Each job re-reads what it needs from Label Studio (the source of truth), so a lost or duplicated event
only delays or repeats harmless work; `framework` gives them all the same bookkeeping."""
