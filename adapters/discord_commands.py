"""The Discord command set and the pure functions that translate its options.

`build_tree` declares every slash command; the callbacks only translate options into the core's
command models (small pure functions, testable without a gateway) and hand them to a
`CommandHandler` — the running adapter, or nothing when the tree is built only to be synced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import discord
from discord import app_commands

from bot import messages
from bot.catalog import ASPECT_CHOICES, SEED_MAX
from bot.commands import (
    Actor,
    EditCommand,
    ImageRef,
    ImagineCommand,
    ModCommand,
    Model3DCommand,
    ModOp,
    Platform,
)
from bot.errors import UserError
from bot.reply import JobPhase

__all__ = [
    "INSTRUCTION_FIELD",
    "CommandHandler",
    "actor_for",
    "build_tree",
    "command_digest",
    "command_payload",
    "edit_command",
    "imagine_command",
    "job_choices",
    "message_image",
    "mod_command",
    "modal_value",
    "model3d_command",
]

INSTRUCTION_FIELD = "instruction"
_MAX_AMOUNT = 1_000_000
_P_ADMINISTRATOR = 1 << 3
_P_MANAGE_GUILD = 1 << 5


class CommandHandler(Protocol):
    """What the command callbacks call: the running Discord adapter."""

    engine: Any

    def actor(self, interaction: discord.Interaction) -> Actor:
        """The Actor behind an interaction."""

    async def run_job(
        self,
        interaction: discord.Interaction,
        command: ImagineCommand | EditCommand | Model3DCommand,
        head: str,
    ) -> None:
        """Start a job; its deferred response becomes the status message headed by `head`."""

    async def show_credits(self, interaction: discord.Interaction) -> None:
        """Answer /credits privately."""

    async def show_job(self, interaction: discord.Interaction, job_id: str) -> None:
        """Post a finished job's result again."""

    async def cancel_job(self, interaction: discord.Interaction, job_id: str) -> None:
        """Cancel a running job."""

    async def moderate(self, interaction: discord.Interaction, command: ModCommand) -> None:
        """Run a /quota subcommand."""

    async def edit_message_image(self, interaction: discord.Interaction, image: ImageRef | None) -> None:
        """The "Edit image" context menu: ask for the instruction, then edit `image`."""

    async def model3d_message_image(self, interaction: discord.Interaction, image: ImageRef | None) -> None:
        """The "Make 3D model" context menu: a 3D model from `image`."""

    async def command_failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """The tree's error handler: whatever escaped a command."""


# --- pure translation ------------------------------------------------------------------------


def actor_for(
    *,
    user_id: str,
    display_name: str,
    guild_id: str | None,
    permissions: int,
    roles: Iterable[tuple[str, str]] = (),
    moderator_role: str | None = None,
) -> Actor:
    """The core's Actor for a Discord user. Moderators: Manage Server, Administrator, or the
    configured moderator role (by id or name). DMs are their own tenant and have none."""
    is_dm = guild_id is None
    wanted = (moderator_role or "").strip().lstrip("@").lower()
    by_role = bool(wanted) and any(wanted in (rid, name.lower()) for rid, name in roles)
    by_perm = bool(permissions & (_P_ADMINISTRATOR | _P_MANAGE_GUILD))
    return Actor(
        platform=Platform.DISCORD.value,
        tenant_id=guild_id or f"dm:{user_id}",
        user_id=user_id,
        display_name=display_name,
        is_moderator=not is_dm and (by_perm or by_role),
        is_dm=is_dm,
    )


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def imagine_command(
    prompt: str,
    *,
    aspect: str | None = None,
    seed: int | None = None,
    negative: str | None = None,
    count: int | None = None,
    model: str | None = None,
) -> ImagineCommand:
    """/imagine's options; inline `--flags` stay in the prompt for the core's parser."""
    return ImagineCommand(
        prompt=prompt.strip(),
        aspect=_text(aspect),
        seed=seed,
        negative=_text(negative),
        count=count,
        model=_text(model),
    )


def edit_command(
    *, url: str, filename: str, instruction: str, seed: int | None = None, model: str | None = None
) -> EditCommand:
    """/edit with an attached image (downloaded once, at admission, from its CDN URL)."""
    return EditCommand(
        image=ImageRef(url=url, filename=filename),
        instruction=instruction.strip(),
        seed=seed,
        model=_text(model),
    )


def model3d_command(
    *,
    prompt: str | None = None,
    url: str | None = None,
    filename: str | None = None,
    face_count: int | None = None,
    geometry_only: bool | None = None,
    model: str | None = None,
) -> Model3DCommand:
    """/model3d from a prompt or an attached image."""
    return Model3DCommand(
        prompt=_text(prompt),
        image=ImageRef(url=url, filename=filename) if url else None,
        face_count=face_count,
        geometry_only=bool(geometry_only),
        model=_text(model),
    )


def mod_command(
    op: ModOp,
    *,
    member: str | None = None,
    amount: int | None = None,
    kind: str | None = None,
    words: str | None = None,
    reason: str | None = None,
) -> ModCommand:
    """A /quota subcommand."""
    return ModCommand(
        op=op,
        target=member,
        amount=amount,
        kind=_text(kind),
        words=_text(words),
        reason=(reason or "").strip(),
    )


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def _looks_like_image(content_type: str | None, filename: str) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind != "application/octet-stream":
        return kind.startswith("image/")
    return filename.lower().endswith(_IMAGE_SUFFIXES)


def message_image(message: discord.Message) -> ImageRef | None:
    """The first image a message carries: an attached picture, else an embed's image (a
    pasted image link shows as an embed of type "image" with the picture as thumbnail)."""
    for att in message.attachments:
        if _looks_like_image(att.content_type, att.filename):
            return ImageRef(url=att.url, filename=att.filename)
    for embed in message.embeds:
        picture = embed.image if embed.image.url else embed.thumbnail if embed.type == "image" else None
        url = picture and (picture.proxy_url or picture.url)
        if url:
            name = urlsplit(url).path.rsplit("/", 1)[-1] or "image"
            return ImageRef(url=url, filename=name)
    return None


def modal_value(components: Sequence[dict[str, Any]], custom_id: str = INSTRUCTION_FIELD) -> str | None:
    """The value typed into text input `custom_id` of a submitted modal (rows or labels)."""
    for c in components:
        if c.get("type") == 1:
            found = modal_value(c.get("components", []), custom_id)
        elif c.get("type") == 18:
            found = modal_value([c.get("component", {})], custom_id)
        else:
            found = c.get("value") if c.get("custom_id") == custom_id else None
        if found is not None:
            return str(found)
    return None


def job_choices(
    jobs: Iterable[Any], current: str, *, running: bool, waiting: Iterable[Any] = ()
) -> list[app_commands.Choice[str]]:
    """Autocomplete for a job id from the user's recent jobs (`JobRecord`s, newest first):
    unfinished ones for /cancel (`running`), finished ones for /show, matching what was typed
    (in the id or the prompt). `waiting` requests (`PendingRequest`s the core still offers for
    Confirm) come first."""
    typed = current.strip().lower()
    choices: list[app_commands.Choice[str]] = []
    offered: set[str] = set()
    for request in waiting:
        if typed and typed not in request.id.lower() and typed not in request.spec.prompt.lower():
            continue
        label = messages.job_choice(
            request.id, request.spec.kind.value, messages.confirm_waiting(), request.spec.prompt
        )
        choices.append(app_commands.Choice(name=label, value=request.id))
        offered.add(request.id)
    for job in jobs:
        if job.id in offered:  # confirmed this instant: one suggestion per id
            continue
        usable = not job.state.terminal if running else job.state is JobPhase.DONE
        if not usable or (typed and typed not in job.id.lower() and typed not in job.spec.prompt.lower()):
            continue
        label = messages.job_choice(job.id, job.spec.kind.value, job.state.value, job.spec.prompt)
        choices.append(app_commands.Choice(name=label, value=job.id))
    return choices[:25]


def command_digest(payload: list[dict[str, Any]], scope: str) -> str:
    """sha256 of the command set and where it is synced; a new digest means sync again."""
    blob = json.dumps({"scope": scope, "commands": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def command_payload(tree: app_commands.CommandTree[Any]) -> list[dict[str, Any]]:
    """The command set as Discord receives it, in a stable order."""
    return sorted((c.to_dict(tree) for c in tree.get_commands()), key=lambda c: str(c["name"]))


# --- the command set ---------------------------------------------------------------------------


def build_tree(client: discord.Client, adapter: CommandHandler | None) -> app_commands.CommandTree[Any]:
    """Every slash command and the message context menus. `adapter` is None when the tree
    is built only to be synced."""
    tree: app_commands.CommandTree[Any] = app_commands.CommandTree(client)
    if adapter is not None:
        tree.error(adapter.command_failed)
    aspects = [app_commands.Choice(name=a, value=a) for a in ASPECT_CHOICES]

    def models(kind: str) -> Callable[..., Awaitable[list[app_commands.Choice[str]]]]:
        async def complete(_: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            names = adapter.engine.model_names(kind) if adapter else []
            cur = current.lower()
            return [app_commands.Choice(name=n, value=n) for n in names if cur in n.lower()][:25]

        return complete

    def job_ids(running: bool) -> Callable[..., Awaitable[list[app_commands.Choice[str]]]]:
        async def complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            if adapter is None:
                return []
            try:
                actor = adapter.actor(interaction)
            except UserError:  # e.g. a display name with broken characters: nothing to offer
                return []
            jobs = await adapter.engine.recent_jobs(actor)
            waiting = await adapter.engine.waiting_requests(actor) if running else []
            return job_choices(jobs, current, running=running, waiting=waiting)

        return complete

    @tree.command(name="imagine", description=messages.command_description("imagine"))
    @app_commands.describe(**messages.option_descriptions("imagine"))
    @app_commands.choices(aspect=aspects)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 4000],
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        negative: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: str | None = None,
    ) -> None:
        if adapter:
            cmd = imagine_command(
                prompt, aspect=aspect, seed=seed, negative=negative, count=count, model=model
            )
            await adapter.run_job(interaction, cmd, head=prompt)

    imagine.autocomplete("model")(models("image"))

    @tree.command(name="edit", description=messages.command_description("edit"))
    @app_commands.describe(**messages.option_descriptions("edit"))
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def edit(
        interaction: discord.Interaction,
        image: discord.Attachment,
        instruction: app_commands.Range[str, 1, 2000],
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        model: str | None = None,
    ) -> None:
        if adapter:
            cmd = edit_command(
                url=image.url, filename=image.filename, instruction=instruction, seed=seed, model=model
            )
            await adapter.run_job(interaction, cmd, head=instruction)

    edit.autocomplete("model")(models("edit"))

    @tree.command(name="model3d", description=messages.command_description("model3d"))
    @app_commands.describe(**messages.option_descriptions("model3d"))
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def model3d(
        interaction: discord.Interaction,
        prompt: str | None = None,
        image: discord.Attachment | None = None,
        face_count: app_commands.Range[int, 40_000, 1_500_000] | None = None,
        geometry_only: bool | None = None,
        model: str | None = None,
    ) -> None:
        if adapter:
            cmd = model3d_command(
                prompt=prompt,
                url=image.url if image else None,
                filename=image.filename if image else None,
                face_count=face_count,
                geometry_only=geometry_only,
                model=model,
            )
            await adapter.run_job(interaction, cmd, head=prompt or (image.filename if image else ""))

    model3d.autocomplete("model")(models("model3d"))

    @tree.command(name="credits", description=messages.command_description("credits"))
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def credits(interaction: discord.Interaction) -> None:
        if adapter:
            await adapter.show_credits(interaction)

    @tree.command(name="show", description=messages.command_description("show"))
    @app_commands.describe(**messages.option_descriptions("show"))
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def show(interaction: discord.Interaction, job_id: str) -> None:
        if adapter:
            await adapter.show_job(interaction, job_id.strip())

    show.autocomplete("job_id")(job_ids(running=False))

    @tree.command(name="cancel", description=messages.command_description("cancel"))
    @app_commands.describe(**messages.option_descriptions("cancel"))
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def cancel(interaction: discord.Interaction, job_id: str) -> None:
        if adapter:
            await adapter.cancel_job(interaction, job_id.strip())

    cancel.autocomplete("job_id")(job_ids(running=True))

    @tree.context_menu(name=messages.discord_edit_menu())
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def edit_image(interaction: discord.Interaction, message: discord.Message) -> None:
        if adapter:
            await adapter.edit_message_image(interaction, message_image(message))

    @tree.context_menu(name=messages.discord_model3d_menu())
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    async def make_3d_model(interaction: discord.Interaction, message: discord.Message) -> None:
        if adapter:
            await adapter.model3d_message_image(interaction, message_image(message))

    tree.add_command(_quota_group(adapter))
    return tree


def _quota_group(adapter: CommandHandler | None) -> app_commands.Group:
    quota = app_commands.Group(
        name="quota",
        description=messages.command_description("quota"),
        default_permissions=discord.Permissions(manage_guild=True),
        allowed_contexts=app_commands.AppCommandContext(guild=True),
    )

    async def run(interaction: discord.Interaction, command: ModCommand) -> None:
        if adapter:
            await adapter.moderate(interaction, command)

    def uid(member: discord.abc.User) -> str:
        return str(member.id)

    @quota.command(name="grant", description=messages.command_description("quota grant"))
    @app_commands.describe(**messages.option_descriptions("quota grant"))
    async def grant(
        interaction: discord.Interaction,
        member: discord.User,
        amount: app_commands.Range[int, 1, _MAX_AMOUNT],
        reason: str | None = None,
    ) -> None:
        await run(interaction, mod_command(ModOp.GRANT, member=uid(member), amount=amount, reason=reason))

    @quota.command(name="take", description=messages.command_description("quota take"))
    @app_commands.describe(**messages.option_descriptions("quota take"))
    async def take(
        interaction: discord.Interaction,
        member: discord.User,
        amount: app_commands.Range[int, 1, _MAX_AMOUNT],
        reason: str | None = None,
    ) -> None:
        await run(interaction, mod_command(ModOp.TAKE, member=uid(member), amount=amount, reason=reason))

    @quota.command(name="set", description=messages.command_description("quota set"))
    @app_commands.describe(**messages.option_descriptions("quota set"))
    async def set_(
        interaction: discord.Interaction,
        member: discord.User,
        amount: app_commands.Range[int, 0, _MAX_AMOUNT],
        reason: str | None = None,
    ) -> None:
        await run(interaction, mod_command(ModOp.SET, member=uid(member), amount=amount, reason=reason))

    def flag(op: ModOp) -> None:
        async def callback(
            interaction: discord.Interaction, member: discord.User, reason: str | None = None
        ) -> None:
            await run(interaction, mod_command(op, member=uid(member), reason=reason))

        path = f"quota {op.value}"
        described = app_commands.describe(**messages.option_descriptions(path))(callback)
        quota.command(name=op.value, description=messages.command_description(path))(described)

    for op in (ModOp.FREEZE, ModOp.UNFREEZE, ModOp.BAN, ModOp.UNBAN):
        flag(op)

    @quota.command(name="allowance", description=messages.command_description("quota allowance"))
    @app_commands.describe(**messages.option_descriptions("quota allowance"))
    async def allowance(
        interaction: discord.Interaction, amount: app_commands.Range[int, 0, _MAX_AMOUNT]
    ) -> None:
        await run(interaction, mod_command(ModOp.ALLOWANCE, amount=amount))

    @quota.command(name="cost", description=messages.command_description("quota cost"))
    @app_commands.describe(**messages.option_descriptions("quota cost"))
    @app_commands.choices(kind=[app_commands.Choice(name=k, value=k) for k in ("image", "edit", "model3d")])
    async def cost(
        interaction: discord.Interaction, kind: str, amount: app_commands.Range[int, 0, _MAX_AMOUNT]
    ) -> None:
        await run(interaction, mod_command(ModOp.COST, kind=kind, amount=amount))

    @quota.command(name="budget", description=messages.command_description("quota budget"))
    @app_commands.describe(**messages.option_descriptions("quota budget"))
    async def budget(
        interaction: discord.Interaction, amount: app_commands.Range[int, 0, _MAX_AMOUNT]
    ) -> None:
        await run(interaction, mod_command(ModOp.BUDGET, amount=amount))

    @quota.command(name="confirm-above", description=messages.command_description("quota confirm-above"))
    @app_commands.describe(**messages.option_descriptions("quota confirm-above"))
    async def confirm_above(
        interaction: discord.Interaction, amount: app_commands.Range[int, 0, _MAX_AMOUNT]
    ) -> None:
        await run(interaction, mod_command(ModOp.CONFIRM_ABOVE, amount=amount))

    @quota.command(name="settings", description=messages.command_description("quota settings"))
    @app_commands.describe(**messages.option_descriptions("quota settings"))
    async def settings(interaction: discord.Interaction) -> None:
        await run(interaction, mod_command(ModOp.SETTINGS))

    @quota.command(name="history", description=messages.command_description("quota history"))
    @app_commands.describe(**messages.option_descriptions("quota history"))
    async def history(interaction: discord.Interaction, member: discord.User) -> None:
        await run(interaction, mod_command(ModOp.HISTORY, member=uid(member)))

    @quota.command(name="top", description=messages.command_description("quota top"))
    @app_commands.describe(**messages.option_descriptions("quota top"))
    async def top(interaction: discord.Interaction) -> None:
        await run(interaction, mod_command(ModOp.TOP))

    @quota.command(name="spend", description=messages.command_description("quota spend"))
    @app_commands.describe(**messages.option_descriptions("quota spend"))
    async def spend(interaction: discord.Interaction) -> None:
        await run(interaction, mod_command(ModOp.SPEND))

    blocklist = app_commands.Group(
        name="blocklist", description=messages.command_description("quota blocklist"), parent=quota
    )

    @blocklist.command(name="add", description=messages.command_description("quota blocklist add"))
    @app_commands.describe(**messages.option_descriptions("quota blocklist add"))
    async def block_add(interaction: discord.Interaction, words: str) -> None:
        await run(interaction, mod_command(ModOp.BLOCK_ADD, words=words))

    @blocklist.command(name="remove", description=messages.command_description("quota blocklist remove"))
    @app_commands.describe(**messages.option_descriptions("quota blocklist remove"))
    async def block_remove(interaction: discord.Interaction, words: str) -> None:
        await run(interaction, mod_command(ModOp.BLOCK_REMOVE, words=words))

    @blocklist.command(name="list", description=messages.command_description("quota blocklist list"))
    @app_commands.describe(**messages.option_descriptions("quota blocklist list"))
    async def block_list(interaction: discord.Interaction) -> None:
        await run(interaction, mod_command(ModOp.BLOCK_LIST))

    return quota
