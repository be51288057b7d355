"""Commands typed as plain text (`/imagine a fox --ar 16:9`, `/quota grant @ann 50 thanks`).

Platforms without typed options (the console, Slack) share this one translation from a line
of text to the core's command models. Mentions may be `@name`, `<@U123>` or `<@U123|name>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot import messages
from bot.commands import (
    CreditsCommand,
    EditCommand,
    ImageRef,
    ImagineCommand,
    ModCommand,
    Model3DCommand,
    ModOp,
    clean_text,
)
from bot.errors import InvalidInputError

__all__ = ["TextCommand", "mention_id", "parse_mod", "parse_text", "split_image_arg"]

_MENTION = re.compile(r"^<@([A-Za-z0-9]+)(?:\|[^>]*)?>$|^@?([\w.-]+)$")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True, slots=True)
class TextCommand:
    """A parsed line: the command model, or a meta command (help, show, cancel, confirm)."""

    name: str
    command: ImagineCommand | EditCommand | Model3DCommand | CreditsCommand | ModCommand | None = None
    arg: str = ""


def mention_id(token: str) -> str | None:
    """The user id in a mention token, or None."""
    m = _MENTION.match(token.strip())
    if not m:
        return None
    return m.group(1) or m.group(2)


def _looks_like_image(token: str) -> bool:
    low = token.lower().split("?", 1)[0]
    return (
        low.startswith(("http://", "https://"))
        or low.endswith(_IMAGE_EXT)
        or low.startswith(("/", "./", "~"))
    )


def split_image_arg(text: str) -> tuple[ImageRef | None, str]:
    """`<image url or path> rest…` → (ImageRef, rest); (None, text) when no image comes first."""
    parts = text.strip().split(maxsplit=1)
    # Slack wraps links as <https://…> or <https://…|label>.
    token = parts[0].strip("<>").split("|", 1)[0] if parts else ""
    if token and _looks_like_image(token):
        ref = ImageRef(url=token) if token.startswith(("http://", "https://")) else ImageRef(path=token)
        return ref, parts[1] if len(parts) > 1 else ""
    return None, text.strip()


_MOD_USAGE = (
    "Use `/quota grant|take|set @user N [reason]`, `/quota freeze|unfreeze|ban|unban @user [reason]`, "
    "`/quota allowance N`, `/quota cost image|edit|model3d N`, `/quota budget N|off`, "
    "`/quota confirm-above N|off`, `/quota settings`, "
    "`/quota blocklist add|remove|list words`, `/quota history @user`, `/quota top`."
)


def parse_mod(text: str) -> ModCommand:
    """`/quota …` text into a ModCommand (the engine checks the actor is a moderator)."""
    words = text.split()
    if not words:
        raise InvalidInputError(_MOD_USAGE)
    sub = words[0].lower()
    rest = words[1:]

    def amount(token: str | None) -> int:
        if token is None:
            raise InvalidInputError(messages.invalid("How many credits?", _MOD_USAGE))
        try:
            return int(token.replace(",", "").replace("_", ""))
        except ValueError:
            raise InvalidInputError(
                messages.invalid(f"`{token}` isn't a whole number.", _MOD_USAGE)
            ) from None

    def target(token: str | None) -> str:
        user = mention_id(token or "")
        if not user:
            raise InvalidInputError(messages.invalid("Which member?", _MOD_USAGE))
        return user

    if sub in ("grant", "take", "set"):
        return ModCommand(
            op=ModOp(sub),
            target=target(rest[0] if rest else None),
            amount=amount(rest[1] if len(rest) > 1 else None),
            reason=" ".join(rest[2:]),
        )
    if sub in ("freeze", "unfreeze", "ban", "unban"):
        return ModCommand(op=ModOp(sub), target=target(rest[0] if rest else None), reason=" ".join(rest[1:]))
    if sub == "allowance":
        return ModCommand(
            op=ModOp.ALLOWANCE, amount=amount(rest[0] if rest else None), reason=" ".join(rest[1:])
        )
    if sub == "cost":
        return ModCommand(
            op=ModOp.COST,
            kind=rest[0] if rest else None,
            amount=amount(rest[1] if len(rest) > 1 else None),
            reason=" ".join(rest[2:]),
        )
    if sub == "budget":
        off = bool(rest) and rest[0].lower() in ("off", "none", "0")
        return ModCommand(
            op=ModOp.BUDGET,
            amount=None if off else amount(rest[0] if rest else None),
            reason=" ".join(rest[1:]),
        )
    if sub == "confirm-above":
        off = bool(rest) and rest[0].lower() in ("off", "none", "0")
        return ModCommand(
            op=ModOp.CONFIRM_ABOVE,
            amount=None if off else amount(rest[0] if rest else None),
            reason=" ".join(rest[1:]),
        )
    if sub == "settings":
        return ModCommand(op=ModOp.SETTINGS)
    if sub == "blocklist":
        action = rest[0].lower() if rest else "list"
        ops = {"add": ModOp.BLOCK_ADD, "remove": ModOp.BLOCK_REMOVE, "list": ModOp.BLOCK_LIST}
        if action not in ops:
            raise InvalidInputError(_MOD_USAGE)
        return ModCommand(op=ops[action], words=" ".join(rest[1:]) or None)
    if sub == "history":
        return ModCommand(op=ModOp.HISTORY, target=target(rest[0] if rest else None))
    if sub == "top":
        return ModCommand(op=ModOp.TOP)
    if sub == "spend":
        return ModCommand(op=ModOp.SPEND)
    raise InvalidInputError(messages.invalid(f"I don't know `/quota {sub}`.", _MOD_USAGE))


def parse_text(line: str) -> TextCommand:
    """One typed line into a command; raises InvalidInputError for unknown commands."""
    line = clean_text(line).strip()  # the models clean again; job ids and names need it here
    if not line.startswith("/"):
        # A chat line is not a paid job: a greeting must not cost credits.
        raise InvalidInputError(messages.not_a_command(line))
    name, _, rest = line[1:].partition(" ")
    name, rest = name.lower(), rest.strip()
    match name:
        case "imagine":
            if rest.lower() == "help":
                return TextCommand("help")
            return TextCommand(name, ImagineCommand(prompt=rest))
        case "edit":
            image, instruction = split_image_arg(rest)
            return TextCommand(name, EditCommand(image=image, instruction=instruction))
        case "model3d":
            image, prompt = split_image_arg(rest)
            return TextCommand(name, Model3DCommand(prompt=prompt or None, image=image))
        case "credits":
            return TextCommand(name, CreditsCommand())
        case "quota":
            return TextCommand(name, parse_mod(rest))
        case "confirm":
            # Without an id: the member's newest request waiting for Confirm.
            return TextCommand(name, arg=rest.split()[0] if rest else "")
        case "show" | "cancel":
            if not rest:
                raise InvalidInputError(messages.invalid("Which job?", f"Give its id: `/{name} 3f9a1c02de`."))
            return TextCommand(name, arg=rest.split()[0])
        case "help" | "quit" | "exit":
            return TextCommand(name)
    raise InvalidInputError(
        messages.invalid(
            f"I don't know `/{name}`.",
            "Try /imagine, /edit, /model3d, /credits, /show, /cancel, /confirm or /quota.",
        )
    )
