"""Reads a run's TensorBoard hparams and text summaries straight from its event files (no TensorBoard server)."""
import pathlib

from tensorboardX.proto import event_pb2
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from tessera.trainer import metrics as metrics_lib


def summaries(workdir):
  for path in sorted(pathlib.Path(workdir, "tb").glob("*.tfevents.*")):
    for data in metrics_lib._records(path):
      event = event_pb2.Event()
      event.ParseFromString(data)
      if event.HasField("summary"):
        yield from event.summary.value


def hparams(workdir):
  """({name: value} of the last session start, [metric tags] of the last experiment)."""
  values, metric_tags = None, None
  for value in summaries(workdir):
    if value.metadata.plugin_data.plugin_name != "hparams":
      continue
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    if data.HasField("session_start_info"):
      values = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
    if data.HasField("experiment"):
      metric_tags = [m.name.tag for m in data.experiment.metric_infos]
  return values, metric_tags


def text(workdir, tag):
  found = [v for v in summaries(workdir) if v.tag.startswith(tag)]
  return found[-1].tensor.string_val[0].decode() if found else None
