"""A small toolkit to boot Debian kernels under QEMU (TCG) for tests.

- :mod:`.debs`: Debian packages by name into ``tests/.cache/vm`` (private apt
  state per suite; the system's apt configuration is never changed).
- :mod:`.kernels`: the kernel packages of the matrix, unpacked, with their
  binfmt_misc module ready for ``insmod``; busybox.
- :mod:`.initramfs`: a newc cpio archive in pure Python.
- :mod:`.boot`: :class:`~.boot.Machine`, :func:`~.boot.boot` with a hard
  timeout, the busybox ``/init`` and the framed results on the console.
- :mod:`.protocol`: the job and result files of the guest helper
  (``guest/helper.c``, compiled with ``gcc -static``).
- :mod:`.matrix`: the kernel-matrix layer built from these
  (``python -m tests.vm.matrix``).
"""
