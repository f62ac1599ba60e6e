"""tidegate dev token: access tokens from the local development issuer."""

from __future__ import annotations

import click

from tidegate.api.auth import SCOPES
from tidegate.cli.common import emit, json_option, load_settings
from tidegate.security.devissuer import DevIssuer


@click.group()
def dev() -> None:
    """Development helpers (embedded default only)."""


@dev.command("token")
@click.option("--tenant", help="Tenant id for the tenant_id claim.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(sorted(SCOPES)),
    help="Repeat for several; default: every tenant scope.",
)
@click.option("--mfa", is_flag=True, help="Add amr=[pwd, mfa] (operator endpoints need it).")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Lifetime in seconds.")
@json_option
def dev_token(
    tenant: str | None, scopes: tuple[str, ...], mfa: bool, ttl: int, as_json: bool
) -> None:
    """Mint an access token signed by the development issuer (TIDEGATE_DEV_TOKENS)."""
    settings = load_settings()
    if not settings.dev_tokens:
        raise click.ClickException(
            "the development issuer is off: set TIDEGATE_DEV_TOKENS=true (serve --demo does)"
        )
    chosen = list(scopes) or sorted(s for s in SCOPES if s != "tidegate:admin")
    token = DevIssuer(settings.data_dir).mint(tenant_id=tenant, scopes=chosen, mfa=mfa, ttl_s=ttl)
    emit({"access_token": token, "scope": " ".join(chosen)}, as_json, token)
