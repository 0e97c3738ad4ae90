"""Promotions: a budget funded when the promotion is made, claimed once per user while it runs."""

from __future__ import annotations

from services.runtime.errors import already_exists, failed_precondition, not_found
from services.runtime.ledger import Overdraft, Posting
from services.wallet.accounts import AccountRules
from services.wallet.model import (
    COIN,
    ISSUED_BY_PROMOTION,
    PROMOTION,
    PROMOTION_FUNDING,
    ClaimResult,
    Duplicate,
    Promotion,
    PromotionRecord,
    WalletAccounts,
    promotion_budget_account,
)
from services.wallet.storage import UnitOfWork


class PromotionRules(AccountRules):
    """Making promotions, claiming them, and listing them with what is left of their budgets."""

    def create_promotion(self, uow: UnitOfWork, record: PromotionRecord) -> Promotion:
        """A promotion and its budget: a holder account funded now, so claims can never overspend it."""
        now = self.clock.now()
        try:
            uow.insert_promotion(record, now)
        except Duplicate:
            raise already_exists(
                "PROMOTION_ALREADY_EXISTS",
                f"promotion {record.promotion_id} already exists",
                promotion_id=record.promotion_id,
            ) from None
        budget = promotion_budget_account(record.promotion_id)
        uow.ledger.open_account(budget, COIN, now)
        self._post(
            uow,
            "",
            PROMOTION_FUNDING,
            record.promotion_id,
            [Posting(ISSUED_BY_PROMOTION, -record.budget), Posting(budget, record.budget)],
            now,
        )
        return Promotion(record, record.budget)

    def claim_promotion(self, uow: UnitOfWork, user_id: str, promotion_id: str) -> ClaimResult:
        wallet = self._wallet(uow, user_id)
        promotion = uow.promotion(promotion_id)
        if promotion is None:
            raise not_found("PROMOTION_NOT_FOUND", f"no promotion {promotion_id}", promotion_id=promotion_id)
        now = self.clock.now()
        if not promotion.start_time <= now < promotion.end_time:
            raise failed_precondition(
                "PROMOTION_NOT_ACTIVE",
                f"promotion {promotion_id} runs from {promotion.start_time.isoformat()} "
                f"to {promotion.end_time.isoformat()}",
                promotion_id=promotion_id,
                start_time=promotion.start_time.isoformat(),
                end_time=promotion.end_time.isoformat(),
            )
        coins = promotion.coins_per_claim
        self._check_room(uow, user_id, coins)
        try:
            uow.insert_claim(promotion_id, user_id, coins, now)
        except Duplicate:
            raise already_exists(
                "PROMOTION_ALREADY_CLAIMED",
                f"user {user_id} already claimed promotion {promotion_id}",
                promotion_id=promotion_id,
                user_id=user_id,
            ) from None
        try:
            self._post(
                uow,
                user_id,
                PROMOTION,
                promotion_id,
                [
                    Posting(promotion_budget_account(promotion_id), -coins),
                    Posting(WalletAccounts(user_id).promotional, coins),
                ],
                now,
            )
        except Overdraft:
            # The budget account's balance cannot go negative (a database constraint): the budget is spent.
            raise failed_precondition(
                "PROMOTION_BUDGET_EXHAUSTED",
                f"promotion {promotion_id} has fewer than {coins} coins left",
                promotion_id=promotion_id,
                coins_per_claim=coins,
            ) from None
        return ClaimResult(coins, self._view(uow, wallet))

    def promotion_remaining(self, uow: UnitOfWork, promotion_id: str) -> int:
        return uow.ledger.balance(promotion_budget_account(promotion_id))

    def promotions(self, uow: UnitOfWork, page_size: int, after: str | None) -> tuple[list[Promotion], bool]:
        """Promotions by id after `after`, each with what is left of its budget; and whether more follow."""
        records = uow.promotions_page(after, page_size + 1)
        page = records[:page_size]
        left = uow.ledger.balances(promotion_budget_account(r.promotion_id) for r in page)
        return [Promotion(r, left[promotion_budget_account(r.promotion_id)]) for r in page], len(records) > page_size
