"""The test harness, the top layer (it uses ``bpf`` and ``injector``, never the reverse).

Networks built in namespaces from topology files (``topology``, ``topology_schema``), frames sent
and captured in them (``capture``, ``sink``, ``compare``), figures measured (``measure``), clean-up
of what dead runs left (``cleanup``), the ``harness`` command (``cli``) and the pytest plugin.
"""
