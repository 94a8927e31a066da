"""``weir sandbox``: a whole cluster inside network namespaces on one machine.

Network and process layer (this package's lower half), used by the orchestration:

* ``topology``  pure plan: names, addresses, CIDRs for the fabric, N nodes and their pods;
* ``wiring``    pure list of links/addresses/routes/sysctls per fabric, node and pod;
* ``netns``     applies wiring with pyroute2 (``LinuxNet``; ``FakeNet`` for tests);
* ``hostfs``    cgroup v2 and bpffs directories (the only things added to the host);
* ``state``     write-ahead JSON state file under /run/weir/sandbox/<id>/;
* ``cluster``   ``Sandbox``: up/add_pod/remove_pod, and ``teardown_all`` from state or id;
* ``procs``     pod processes (spawn, exec) in a pod's netns + cgroup via ``launch``;
* ``echo``      the built-in echo server for pods without a command.

The package imports nothing heavy at import time, so ``python -m services.sandbox.launch`` (run
for every pod process and every ``exec``) starts fast.
"""
