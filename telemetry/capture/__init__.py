"""Capture: the seam between the caller's HTTP attempt and everything after it.

`state.AttemptCapture` is the one state machine (request seen → headers → bytes → end) for every
entry point; `middleware` (the SDK's per-attempt hook) and `transport` (raw httpx callers) only feed it,
and `streams` tees response bytes into it for sync and async alike.
"""
