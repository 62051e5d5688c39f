# fastproxy._core: datagram (included by _core.pyx; see the module docstring there).
