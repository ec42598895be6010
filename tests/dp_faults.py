"""``ug sample`` with a fault injected on one process, for tests/test_data_parallel.py.

``python dp_faults.py FAULT RANK UG-ARGUMENTS...`` runs ``ug`` with FAULT on the process of rank
RANK (``RANK`` from the launcher's environment, 0 without one):

- ``raise``: a RuntimeError when its UG sampling starts;
- ``usage``: a usage error there;
- ``kill``: SIGKILL there;
- ``kill-writing``: SIGKILL once the PNGs and the grid are written, before metrics.json.
"""

from __future__ import annotations

import os
import signal
import sys

import ug_core.cli as cli
import ug_core.demo.model as demo_model
import ug_core.demo.report as report

fault, faulty_rank, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if int(os.environ.get("RANK", "0")) == faulty_rank:
    if fault == "kill-writing":
        save = report.save_outputs

        def _save_outputs(*args, **kwargs):
            path = save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return path

        report.save_outputs = _save_outputs
    else:
        generate = demo_model.generate

        def _generate(*args, **kwargs):
            if kwargs.get("desc") == "UG":
                if fault == "raise":
                    raise RuntimeError("injected fault")
                if fault == "usage":
                    raise cli.UsageError("injected usage error")
                os.kill(os.getpid(), signal.SIGKILL)
            return generate(*args, **kwargs)

        demo_model.generate = _generate
sys.exit(cli.main(argv))
