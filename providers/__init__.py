"""Vendor clients for Hunyuan Image 3 / Hunyuan3D, behind one interface (`providers.base`).

Each vendor module knows one wire format and nothing about chat; `PROVIDERS` names them for
lazy import, so nothing loads a vendor that is not configured.
"""

__all__ = ["PROVIDERS"]

#: vendor name -> "module:Class" (explicit registry; no directory scanning)
PROVIDERS: dict[str, str] = {
    "apiinone": "providers.apiinone:ApiInOneProvider",
    "pixazo": "providers.pixazo:PixazoProvider",
    "aimlapi": "providers.aimlapi:AimlApiProvider",
    "novita": "providers.novita:NovitaProvider",
    "runware": "providers.runware:RunwareProvider",
}
