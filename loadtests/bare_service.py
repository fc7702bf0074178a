"""The ceiling for the benchmarks: a bare BentoML endpoint returning a constant, served the same way
as Folio (`bentoml serve`, one worker, the same fix to BentoML's timeout middleware)."""

from __future__ import annotations

import bentoml

from runners.platform import bentoml_patch


@bentoml.service(name="bare", traffic={"timeout": 30}, service_class=bentoml_patch.PatchedService)
class Bare:
    @bentoml.api
    async def ping(self) -> dict[str, str]:
        return {"status": "ok"}
