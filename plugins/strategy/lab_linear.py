# The lab's strategy: Ansible's linear strategy, carried by Mitogen when Mitogen is installed
# (requirements/lab.txt installs it in .venv), else Ansible's own.
#
# Why: a module run in a TCG guest costs 6-9 s, nearly all of it Python importing Ansible's
# module_utils anew from the AnsiballZ zip (measured: `raw` 1.6 s, `ping` 8.6 s, `stat` 10.5 s).
# Mitogen keeps one interpreter per guest for the whole run and imports each module once, so
# an unchanged services.yml run on three guests takes 1.5 min instead of 8 (docs/lab.md, "Speed").
#
# Ansible's own linear strategy, without Mitogen: ANSIBLE_STRATEGY=linear (or
# CXL_LAB_MITOGEN=0). The play keywords, modules and results are the same either way.
from __future__ import annotations

import os

DOCUMENTATION = """
    name: lab_linear
    short_description: Ansible's linear strategy, carried by Mitogen when it is installed
    description:
        - Task by task on all hosts, as C(ansible.builtin.linear). When the C(mitogen) package
          is importable and C(CXL_LAB_MITOGEN) is not C(0), Mitogen runs the modules in one
          persistent interpreter per host.
    author: CXL-DSM Lab
"""

StrategyModule = None
if os.environ.get("CXL_LAB_MITOGEN", "1") != "0":
    try:
        import ansible_mitogen.loaders
        import ansible_mitogen.strategy
    except ImportError:
        pass
    else:
        _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

        class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # noqa: F811
            """Mitogen's linear strategy (the same as its own mitogen_linear)."""

if StrategyModule is None:
    from ansible.plugins.strategy.linear import StrategyModule  # noqa: F401
