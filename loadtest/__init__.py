"""The load-test toolkit: generator, JMeter plans, verifier and report (docs/loadtest.md).

::

    python -m loadtest run       provision accounts/chats, drive the gateway at an
                                 open-loop rate (ramp, hold), record every send
    python -m loadtest verify    join the records with MongoDB: no loss, no duplicate,
                                 seq contiguous, ts monotonic and inside [send, ack]
    python -m loadtest report    one self-contained HTML file with plots and the verdict
    python -m loadtest aws-run   the same run split over N ECS tasks
    python -m loadtest gather    download and merge the tasks' results from S3
    python -m loadtest local     the local stack + run + verify + report (make loadtest)

A run directory holds ``manifest.json`` (accounts, chats), ``results.json`` (per-second
series, HDR histograms, Redis snapshots), ``records/*.msgpack`` (one row per send) and,
after verification, ``verify.json``; the report reads the directory.
"""
