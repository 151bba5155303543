"""Session 22: the deferred add's stall. Inductor's LoweringException stringifies its IR arguments (exc.OperatorIssue
.operator_str), which with the deferral's nested IR did not finish (call 2). Here operator_str names only the target,
so the original exception prints. Runs s21_time.py's `defer` variant (a38112c export first on PYTHONPATH). Call 5 ran
it from .ab/, where s21_time.py is docs/results/perf/session21/s21_time.py with tracebacks every 20 s instead of 60
and whole tracebacks of failures (`traceback.print_exc()`)."""
import runpy
import sys
import traceback

import torch._inductor.exc as exc

exc.OperatorIssue.operator_str = staticmethod(lambda target, args, kwargs: f"  target: {target} ({len(args)} args)")
sys.argv = [".ab/s21_time.py", sys.argv[1], sys.argv[2]]
try:
    runpy.run_path(".ab/s21_time.py", run_name="__main__")
except BaseException:
    traceback.print_exc()
