"""MQAR: multi-query associative recall, a trained-task benchmark kind (see kind.py)."""
