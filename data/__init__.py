from tessera.data import embedded  # registers "embedded"
from tessera.data import prepared  # registers "prepared" (a set data.path: scripts/prepare_text or prepare_meds)
from tessera.data import ehr_cuts  # registers "ehr_cuts" (cut-point windows over prepared MEDS; synthetic preparer)
from tessera.data import zett_pipeline  # registers "embedded_bpe" (cached BPE of the corpus) and "zett" (sampled tokenizers)
from tessera.data import synthetic_recall  # registers "synthetic_recall" (TRIM-KV §9: recall/copy tasks in corpus text)
