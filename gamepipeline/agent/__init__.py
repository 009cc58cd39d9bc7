"""The GamePipeline agent: the process on each GameNode that runs pipelines.

It keeps one stream open to the server (``connection``), runs every pipeline it is handed
with ansible-runner in a private data dir (``runner``), turns ansible-runner's events into
step and pipeline reports (``events``, free of I/O) and delivers those reports in order,
once, across disconnects (``reporter``). ``app`` ties them together and is what the
``gamepipeline agent`` command starts.
"""

import os

# The agent forks ansible-playbook (through ansible-runner and pexpect) while gRPC's
# threads are busy with the stream. gRPC's fork handlers then run in the child between
# fork and exec and can break it ("epoll_wait error: Bad file descriptor"); the child only
# ever execs, so it needs none of them. This must be set before gRPC starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
