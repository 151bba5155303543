"""Session 23: which lowering raises while inductor compiles the deferred add (a38112c's tree, .ab/defer first on
PYTHONPATH). Every exception leaving GraphLowering.call_function is printed with its original traceback the first
time it passes (operator_str made cheap, so formatting cannot stall); then s21_time.py's variants run as usual.

    PYTHONHASHSEED=N python3 s23_defer.py OUTDIR defer[,nodefer,...]
"""
import runpy
import sys
import traceback

import torch._inductor.exc as exc
from torch._inductor.graph import GraphLowering

exc.OperatorIssue.operator_str = staticmethod(lambda target, args, kwargs: f"  target: {target} ({len(args)} args)")
ORIG = GraphLowering.call_function
SEEN = set()


def call_function(self, target, args, kwargs):
    try:
        return ORIG(self, target, args, kwargs)
    except Exception as error:
        if id(error) not in SEEN:
            SEEN.add(id(error))
            print(f"LOWERING RAISED at {target}: {type(error).__name__}: {str(error)[:1500]}", flush=True)
            traceback.print_exception(error, limit=-25)
        raise


GraphLowering.call_function = call_function
sys.argv = [".ab/s21_time.py", sys.argv[1], sys.argv[2]]
runpy.run_path(".ab/s21_time.py", run_name="__main__")
