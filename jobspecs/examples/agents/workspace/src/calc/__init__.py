"""A tiny calculator with two planted bugs, for the fix-failing-test demo job.

``add`` and ``mul`` are wrong on purpose; ``tests/test_calc.py`` catches each
one. The demo agent (``tools/demo_agent.py``) repairs one bug per ``execute``.
"""


def add(a, b):
    return a - b


def sub(a, b):
    return a - b


def mul(a, b):
    return a + b
