"""Hand-built MEDS events for the MEDS tests (tests/data, tests/ehr)."""
import datetime

import numpy as np

from tessera.data import meds_schema

_EPOCH = datetime.datetime(1970, 1, 1)


def us(*args) -> int:
  """Microseconds since the epoch of datetime.datetime(*args) (MEDS time unit)."""
  return (datetime.datetime(*args) - _EPOCH) // datetime.timedelta(microseconds=1)


def events(rows) -> meds_schema.Events:
  """rows: (subject, time_us or None, code, value or None)."""
  codes = sorted({r[2] for r in rows})
  return meds_schema.Events(
      np.asarray([r[0] for r in rows], np.int64),
      np.asarray([meds_schema.NO_TIME if r[1] is None else r[1] for r in rows], np.int64),
      np.asarray([codes.index(r[2]) for r in rows], np.int32),
      np.asarray([np.nan if r[3] is None else r[3] for r in rows], np.float32), codes)
