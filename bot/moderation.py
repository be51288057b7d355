"""Moderation and the credits view: the ledger as members and moderators see it."""

from __future__ import annotations

import logging

from bot import messages
from bot.admission import TenantCache
from bot.commands import Actor, ModCommand, ModOp
from bot.confirm import ConfirmStore
from bot.errors import InvalidInputError
from bot.jobs import CreditsView, ModResult
from bot.jobstore import JobStorePort
from bot.ledger import CreditLedger
from bot.params import split_words
from bot.policy import require_moderator
from providers.base import Kind

__all__ = ["Moderation"]

_log = logging.getLogger(__name__)


class Moderation:
    """/credits for members; /quota operations for moderators (every change audited)."""

    def __init__(
        self, *, ledger: CreditLedger, store: JobStorePort, tenants: TenantCache, confirms: ConfirmStore
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.tenants = tenants
        self.confirms = confirms

    async def credits(self, actor: Actor) -> CreditsView:
        """The actor's balance, allowance, next refill and recent jobs."""
        account = await self.ledger.account(actor.tenant, actor.user_id)
        recent = tuple(
            {
                "id": j.id,
                "kind": j.spec.kind.value,
                "state": j.state.value,
                "cost": j.cost,
                "prompt": j.spec.prompt,
            }
            for j in await self.store.recent(actor.tenant, actor.user_id)
        )
        return CreditsView(
            balance=account.balance,
            allowance=account.allowance,
            next_refill=account.next_refill,
            frozen=account.frozen,
            banned=account.banned,
            recent=recent,
            text=messages.credits_view(
                account.balance,
                account.held,
                account.allowance,
                account.next_refill,
                account.frozen,
                recent,
                banned_=account.banned,
            ),
        )

    async def moderate(self, actor: Actor, command: ModCommand) -> ModResult:
        """Run a moderator operation; refused with `NotModeratorError` for members."""
        require_moderator(actor)
        self.tenants.drop(actor.tenant)
        t, led, who, why = (
            actor.tenant,
            self.ledger,
            f"{actor.platform}:{actor.user_id}",
            command.reason or "",
        )
        op = command.op
        target = command.target

        def need_target() -> str:
            if not target:
                raise InvalidInputError(
                    messages.invalid("Which member?", f"Mention the member: `/quota {op} @user`.")
                )
            return target

        def need_amount() -> int:
            if command.amount is None:
                raise InvalidInputError(
                    messages.invalid("How many credits?", f"Add an amount: `/quota {op} … 50`.")
                )
            return command.amount

        match op:
            case ModOp.GRANT | ModOp.TAKE | ModOp.SET:
                user, amount = need_target(), need_amount()
                change = {ModOp.GRANT: led.grant, ModOp.TAKE: led.take, ModOp.SET: led.set_balance}[op]
                await change(t, user, amount, actor=who, reason=why)
                account = await led.account(t, user)
                text = messages.mod_balance(op.value, user, amount, account.balance)
            case ModOp.FREEZE | ModOp.UNFREEZE | ModOp.BAN | ModOp.UNBAN:
                user = need_target()
                flag = {
                    ModOp.FREEZE: led.freeze,
                    ModOp.UNFREEZE: led.unfreeze,
                    ModOp.BAN: led.ban,
                    ModOp.UNBAN: led.unban,
                }[op]
                await flag(t, user, actor=who, reason=why)
                text = messages.mod_flag(op.value, user)
            case ModOp.ALLOWANCE:
                amount = need_amount()
                await led.set_allowance(t, amount, actor=who, reason=why)
                text = messages.mod_allowance(amount)
            case ModOp.COST:
                kind = (command.kind or "").strip().lower()
                if kind not in {k.value for k in Kind}:
                    raise InvalidInputError(
                        messages.invalid(
                            f"`{kind or '?'}` isn't a command kind.", "Use image, edit or model3d."
                        )
                    )
                amount = need_amount()
                await led.set_cost(t, kind, amount, actor=who, reason=why)
                text = messages.mod_cost(kind, amount)
            case ModOp.BUDGET:
                await led.set_budget(t, command.amount or None, actor=who, reason=why)
                text = messages.mod_budget(command.amount or None)
            case ModOp.CONFIRM_ABOVE:
                if command.amount is not None and command.amount < 0:
                    raise InvalidInputError(
                        messages.invalid(
                            f"`{command.amount}` is below zero.",
                            "Give credits, or `off`: `/quota confirm-above 50`.",
                        )
                    )
                above = command.amount or None  # 0 and `off` both turn it off
                await self.confirms.set_threshold(t, above, actor=who, reason=why)
                text = messages.mod_confirm_above(above)
            case ModOp.SETTINGS:
                settings = await led.tenant_settings(t)
                costs = {kind: await led.cost_for(t, kind) for kind in led.default_costs}
                text = messages.settings_view(
                    settings.daily_allowance,
                    settings.budget,
                    settings.budget_used_today,
                    costs,
                    len(settings.blocklist),
                    await self.confirms.threshold(t),
                )
            case ModOp.BLOCK_ADD | ModOp.BLOCK_REMOVE:
                words = split_words(command.words or "")
                if not words:
                    raise InvalidInputError(
                        messages.invalid("Which words?", "For example `/quota blocklist add gore`.")
                    )
                block = led.block_add if op is ModOp.BLOCK_ADD else led.block_remove
                for w in words:
                    await block(t, w, actor=who, reason=why)
                text = messages.mod_blocklist(op is ModOp.BLOCK_ADD, words, await led.blocklist(t))
            case ModOp.BLOCK_LIST:
                text = messages.blocklist_view(await led.blocklist(t))
            case ModOp.HISTORY:
                user = need_target()
                text = messages.history_view(user, await led.history(t, user, limit=15))
            case ModOp.TOP:
                text = messages.top_view(await led.top_spenders(t, limit=10))
            case ModOp.SPEND:
                text = messages.spend_view(await self.store.spend(t))
        self.tenants.drop(actor.tenant)  # again: an admission may have re-read it meanwhile
        log_line = messages.mod_log_line(actor.display_name or actor.user_id, op.value, target, command, why)
        _log.info("moderation tenant=%s actor=%s op=%s target=%s", t, who, op.value, target)
        return ModResult(text=text, log_line=log_line)
