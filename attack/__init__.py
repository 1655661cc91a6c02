"""The attack suite of the lab: an attacker VM (or process) against a region's channels.

    python -m attack run --view /dev/cxl/cxl0 --mode secdsm --attack read ...  # the attacker
    python -m attack honest --path /dev/cxl/cxl0 --seed S --label L ...  # the honest client
    python -m attack watch --lab .lab/lab.json --nonce N ...  # the host's check
    python -m attack markers --nonce N --mode off  # the injected key, for the server check
    python -m attack report bench/lab/<run>  # report.md, report.json
    python -m attack local --config run.json  # everything, on one host
    python -m attack lab --lab .lab/lab.json --ssh-config .lab/ssh_config  # everything, in the lab

docs/security.md ("The attack suite") tells the story; playbooks/attack.yml installs it in the
guests and runs `python -m attack lab` (attack/lab.py) on the hypervisor.
"""

from .attacks import ATTACKS, CONTROL

__all__ = ["ATTACKS", "CONTROL"]
