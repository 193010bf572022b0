"""TensorBoard event files without TensorFlow: a streaming, checking reader and a whole-record writer.

An event file is a sequence of TFRecords (``uint64 length``, ``uint32 masked CRC32C of the
length``, ``data``, ``uint32 masked CRC32C of the data``), each record one serialized
TensorBoard ``Event`` proto. `iter_records` streams a file with bounded memory (one record at a
time), checks both checksums of every record and reports what it could not read as a
`RecordProblem` with the file and byte offset: TensorBoard's own loader stops silently at the
first bad record, so a corrupt or cut file would look like a short run. `EventFileWriter` writes
the same framing, only ever whole records, and creates its file at the first successful flush.

`read_run_details(log_dir)` reads every scalar of a run into compact arrays and says what it
found (`RunData.kind`, `RunData.problems`: corrupt or truncated records, two runs interleaved
in one folder); `read_run(log_dir)` is the plain ``{tag: [(step, value), ...]}`` form.

Usage::

    run = keras_bn.events.read_run_details("logs/run1")
    print(run.kind, [str(p) for p in run.problems])
    steps, values = run.scalars["grad_global/norm"]
"""

from keras_bn.events.records import (EventFileWriter, RecordProblem, encode_record, finish_writes, iter_events,
                                     iter_records, masked_crc32c)
from keras_bn.events.runs import (KIND_DIAGNOSTICS, KIND_EMPTY, KIND_KERAS, KIND_OTHER, RunData, Series, event_files,
                                  last_step, read_run, read_run_details, run_event_folder)

__all__ = [
    "EventFileWriter",
    "KIND_DIAGNOSTICS",
    "KIND_EMPTY",
    "KIND_KERAS",
    "KIND_OTHER",
    "RecordProblem",
    "RunData",
    "Series",
    "encode_record",
    "event_files",
    "finish_writes",
    "iter_events",
    "iter_records",
    "last_step",
    "masked_crc32c",
    "read_run",
    "read_run_details",
    "run_event_folder",
]
