"""Helpers for the tests of the lab's Ansible modules: load them the way Ansible would.

Ansible puts module_utils/ under ansible.module_utils.* when it ships a module;
here the same names are registered in sys.modules, then each library/ module is
imported from its file. Modules run through AnsibleModule with their arguments
set as Ansible sets them, and exit_json/fail_json raise instead of exiting
(ansible-core's own unit-test pattern).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ansible = pytest.importorskip("ansible")

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.common.text.converters import to_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


for _util in ("cxl_numa", "cxl_lab", "cxl_metal"):
    _load("ansible.module_utils." + _util, REPO / "module_utils" / (_util + ".py"))


def load_library(name):
    return _load("cxl_lab_library_" + name, REPO / "library" / (name + ".py"))


class AnsibleExitJson(Exception):
    """exit_json was called; the result is in args[0]."""


class AnsibleFailJson(Exception):
    """fail_json was called; the result is in args[0]."""


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, msg, **kwargs):
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


def write_tree(root, files):
    """Create FILES ({relative path: text}) under ROOT."""
    for rel, text in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_runner(monkeypatch):
    """run(module, args, check_mode=False, main=None) -> ("exit"|"fail", result)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)

    def run(module, args, check_mode=False, main=None):
        args = dict(args)
        args["_ansible_check_mode"] = check_mode
        args["_ansible_diff"] = True
        monkeypatch.setattr(
            basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        )
        monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
        try:
            (main or module.main)()
        except AnsibleExitJson as done:
            return "exit", done.args[0]
        except AnsibleFailJson as failed:
            return "fail", failed.args[0]
        raise AssertionError("the module neither exited nor failed")

    return run
