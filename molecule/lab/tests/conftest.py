"""The lab's verify: the guests' ssh masters (labssh.py) end with the session."""

import labssh


def pytest_unconfigure(config):
    labssh.close()
