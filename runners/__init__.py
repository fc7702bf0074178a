"""Folio's serving side: in-process stages and the platform around them, wired by ``service.py``.

These are plain Python modules running inside each BentoML worker, not BentoML 1.x "Runners" (a hop
between processes costs more than the whole request pipeline). The sub-packages follow the architecture:

* ``stages/``   the request pipeline: the loaded model version, history -> cache -> retrieval -> ranking
                -> rules, and books added after training.
* ``state/``    the state store (protocol, in-process and Redis backends), the catalog and feedback logs.
* ``serving/``  the versions a worker serves: deploy, swap, retire, A/B variants.
* ``triton/``   the Triton Inference Server: embedded process, repository rendering, backend model, client.
* ``http/``     what stands between HTTP and the pipeline: schemas, guard middleware, OpenAPI document.
* ``platform/`` settings, metrics, thread pools, the Bento image and the BentoML patch.
"""
