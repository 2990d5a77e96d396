#!/usr/bin/env python
"""msrun as it behaves on a machine other than the master's, for two "machines" on one host in tests.

msrun starts the job's scheduler on every machine where --master_addr is a local address; on one host
that is every "machine", and a second scheduler fails for want of its port. On a real second machine
the master's address is not local, which this wrapper reproduces; everything else is msrun unchanged.
"""
import sys

from mindspore.parallel.cluster.process_entity import _api
from mindspore.parallel.cluster.run import main

_api._is_local_ip = lambda address: False  # pylint: disable=protected-access

if __name__ == "__main__":
    sys.exit(main())
