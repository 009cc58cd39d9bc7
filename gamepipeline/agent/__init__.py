"""The GamePipeline agent: the process on each GameNode that runs pipelines.

It keeps one stream open to the server (``connection``), runs every pipeline it is handed
with ansible-runner in a private data dir (``runner``), turns ansible-runner's events into
step and pipeline reports (``events``, free of I/O) and delivers those reports in order,
once, across disconnects (``reporter``). ``app`` ties them together and is what the
``gamepipeline agent`` command starts.
"""
