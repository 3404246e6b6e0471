"""A synthetic Label Studio Ranker project (label_config_ranker.xml) in the JSON export's form, with figures
small enough to check by hand; tests/test_report_ranker.py checks the report's numbers against them."""

from __future__ import annotations

from datetime import timedelta

from synthetic_export import START

A1, A2, A3 = "answer1", "answer2", "answer3"


def _stamp(minutes: float) -> str:
    return (START + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ranker_tasks() -> list[dict]:
    """Three answers per task, shown in the data's order (answer1, answer2, answer3), in the JSON export's
    form: predictions listed by id, the one an annotation started from saved in its `prediction`.

    * Tasks 1-3 started from the model's order: v1 showed 1,2,3 and got 1,3,2 (tau 1/3); v1 showed 1,2,3
      and got 3,2,1 (tau -1); v2 showed 2,1,3 and it was kept (tau 1). Overall (1/3 - 1 + 1) / 3 = 1/9.
    * Tasks 4-13: annotator 3 submits the shuffled order as shown (first place: slot 1), ten times.
    * Tasks 14-19: annotator 1 ranks with first places in slots 2, 3, 2, 3, 1, 2; annotator 2 also ranks
      task 14 (same first answer, tau 1/3 with annotator 1) and task 15 (annotator 1's order reversed, tau
      -1): between annotators (1/3 - 1) / 2 = -1/3, and task 15 splits on the first place.
      First places over the 18 rankings from the shuffled order: slot 1 11, slot 2 5, slot 3 2.
    * Task 20: a skipped annotation; task 21: a result ordering one answer (no usable order).
    """
    orders = {}  # task -> [(annotator, order, prediction (id, version, order) or None)]
    orders[1] = [(1, [A1, A3, A2], (101, "v1", [A1, A2, A3]))]
    orders[2] = [(1, [A3, A2, A1], (102, "v1", [A1, A2, A3]))]
    orders[3] = [(2, [A2, A1, A3], (103, "v2", [A2, A1, A3]))]
    for t in range(4, 14):
        orders.setdefault(t, []).append((3, [A1, A2, A3], None))
    firsts = {14: [A2, A1, A3], 15: [A3, A1, A2], 16: [A2, A3, A1], 17: [A3, A2, A1], 18: [A1, A3, A2],
              19: [A2, A3, A1]}
    for t, order in firsts.items():
        orders.setdefault(t, []).append((1, order, None))
    orders[14].append((2, [A2, A3, A1], None))
    orders[15].append((2, [A2, A1, A3], None))
    orders[21] = [(2, [A2], None)]

    def result(order):
        return [{"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": order}}}]

    tasks, ann_id = [], 0
    for t in range(1, 22):
        annotations, predictions = [], []
        for who, order, shown in orders.get(t, []):
            ann_id += 1
            ann = {"id": ann_id, "completed_by": who, "result": result(order), "was_cancelled": False,
                   "created_at": _stamp(t * 3 + who), "lead_time": 4.0 + who * 3 + t % 3, "prediction": {},
                   "parent_prediction": None, "task": t, "project": 9}
            if shown:
                pid, version, model_order = shown
                ann["parent_prediction"] = pid
                ann["prediction"] = {"id": pid, "result": result(model_order), "score": 0.7,
                                     "model_version": version, "task": t}
                predictions.append(pid)
            annotations.append(ann)
        if t == 20:
            ann_id += 1
            annotations.append({"id": ann_id, "completed_by": 1, "result": [], "was_cancelled": True,
                                "created_at": _stamp(50), "lead_time": 1.0, "prediction": {},
                                "parent_prediction": None, "task": t, "project": 9})
        tasks.append({"id": t, "project": 9, "annotations": annotations, "predictions": predictions, "data": {
            "prompt": f"Question {t}?",
            "answers": [{"id": a, "title": f"Answer {n}", "body": f"answer {n} to question {t}"}
                        for n, a in enumerate((A1, A2, A3), 1)]}})
    return tasks
