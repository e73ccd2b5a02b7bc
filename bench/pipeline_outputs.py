"""The pipeline's stage functions on a small mock sky (60 stars) into argv[1], with the package found first on
PYTHONPATH (old flat layout or the subpackages of issue #17), so that two revisions' outputs can be compared byte for
byte:

    PYTHONPATH=<checkout A> python bench/pipeline_outputs.py /tmp/A
    PYTHONPATH=<checkout B> python bench/pipeline_outputs.py /tmp/B
    diff -rq /tmp/A /tmp/B     # then compare what differs (results/restructure.md says what may)
"""

import sys, json, importlib, warnings
from pathlib import Path

warnings.simplefilter('ignore')


def imp(*names):
    for n in names:
        try:
            return importlib.import_module(f'stellar_spectra.{n}')
        except ModuleNotFoundError:
            pass
    raise ImportError(names)


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
import stellar_spectra

print(stellar_spectra.__file__)
mocksky = imp('mock.mocksky', 'mocksky')
xm = imp('pipeline.crossmatch', 'crossmatch')
pre = imp('pipeline.preprocess', 'preprocess')
sto = imp('pipeline.storage', 'storage')
tr = imp('model.training', 'training')
res = imp('evaluation.results', 'results')
mocksky.generate_mock_sky(out / 'sky', n_stars=60, seed=11, n_workers=2, progress=False)
xm.crossmatch_surveys(out / 'sky', out=out / 'xm' / 'common_stars.parquet', progress=False)
pre.run_preprocess(
    out / 'sky', out / 'xm' / 'common_stars.parquet', out / 'pre', chunk_size=16, n_workers=1, progress=False
)
sto.merge_shards(out / 'pre' / 'shards', out / 'store', progress=False)
(out / 'params.yaml').write_text(
    json.dumps(
        dict(
            train=dict(steps=30, eval_every=10, batch_stars=8, hidden=32, latent_dim=8, n_fourier=16, n_layers=2),
            evaluate=dict(map_steps=3, rv_scan=100.0, n_val_map=3, n_impute=2, pca_iter=5, ae_steps=5, cannon=False),
        )
    )
)
tr.run_training(out / 'store' / 'regridded.h5', out / 'model', params=out / 'params.yaml', progress=False)
res.run_evaluation(
    out / 'store' / 'regridded.h5',
    out / 'model',
    out / 'sky',
    out / 'results',
    params=out / 'params.yaml',
    progress=False,
)
print('done')
