"""library/cxl_virt_probe.py: the decision, with a fake prober and a fake QEMU."""

import io

import pytest
from ansible.module_utils import basic

from moduleutil import load_library


@pytest.fixture
def module():
    return load_library("cxl_virt_probe")


def decide(module, run_module, virt_type, booted):
    def main():
        m = basic.AnsibleModule(
            argument_spec=dict(
                virt_type=dict(type="str"),
                kernel=dict(type="path"),
                qemu=dict(type="str", default="sh"),
                timeout=dict(type="int", default=1),
            ),
            supports_check_mode=True,
        )
        m.exit_json(**module.core(m, prober=lambda qemu, kernel, timeout: (booted, "fake")))

    return run_module(
        module, {"virt_type": virt_type, "kernel": "/nonexistent"}, check_mode=True, main=main
    )


def test_auto_uses_kvm_when_a_kernel_boots(module, run_module):
    how, result = decide(module, run_module, "auto", True)
    assert result["virt_type"] == "kvm" and result["changed"] is False


def test_auto_falls_back_to_tcg_with_a_warning(module, run_module, monkeypatch):
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text: warnings.append(text))
    how, result = decide(module, run_module, "auto", False)
    assert result["virt_type"] == "qemu"
    assert any("TCG" in w for w in warnings)


def test_explicit_type_is_not_probed(module, run_module):
    how, result = decide(module, run_module, "kvm", False)
    assert result["virt_type"] == "kvm"


class FakeProc:
    def __init__(self, output, exits):
        self.stdout = io.BytesIO(output)
        self.stdout.fileno = lambda: 0
        self._exits = exits
        self.returncode = 1 if exits else None
        self.killed = False

    def poll(self):
        return self.returncode

    def kill(self):
        self.killed = True
        self.returncode = -9

    def wait(self):
        return self.returncode


@pytest.mark.parametrize(
    "output, exits, ok",
    [
        (b"[ 1.0] VFS: Unable to mount root fs on unknown-block(0,0)\n", False, True),
        (b"qemu: failed to set MSR 0x10a\n", True, False),
        (b"", False, False),
    ],
)
def test_probe_reads_the_serial_console(module, monkeypatch, tmp_path, output, exits, ok):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0")
    monkeypatch.setattr(module.os, "access", lambda path, mode: True)
    monkeypatch.setattr(module.os, "set_blocking", lambda fd, flag: None)
    procs = []

    def runner(cmd, **kwargs):
        procs.append(FakeProc(output, exits))
        return procs[-1]

    ticks = iter(range(0, 1000))
    result, reason = module.probe_kvm(
        "qemu", str(kernel), 3, runner=runner, clock=lambda: next(ticks)
    )
    assert result is ok, reason
    assert procs[0].returncode is not None  # never left running
