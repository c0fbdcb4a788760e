-- Two ledger changes (issue 15).
--
-- 1. The hold rule of SPEC §4.3.2/§4.5: a hold is refused only when the available balance
--    (balance − held) is below its amount, or the balance is below zero (a refund debt). The
--    old rule also refused any hold on a zero balance. The same rule as `quota_core::hold::can_hold`
--    (the SQLite engine's). Same batching, same lock order.
CREATE OR REPLACE FUNCTION quota_hold(p_ids TEXT[], p_accounts TEXT[], p_amounts BIGINT[], p_ttl_ms BIGINT, p_origin TEXT)
RETURNS TABLE (r_id TEXT, r_granted BOOLEAN, r_balance BIGINT, r_available BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_expires BIGINT := quota_now_ms() + p_ttl_ms;
    v_account TEXT;
    v_balance BIGINT;
    v_held    BIGINT;
    v_added   BIGINT := 0;
    g_ids      TEXT[] := '{}';
    g_accounts TEXT[] := '{}';
    g_amounts  BIGINT[] := '{}';
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_ids, 1), 0) LOOP
        IF v_account IS DISTINCT FROM p_accounts[i] THEN
            IF v_added > 0 THEN
                UPDATE accounts SET held = held + v_added WHERE id = v_account;
            END IF;
            v_account := p_accounts[i];
            v_added := 0;
            SELECT a.balance, a.held INTO v_balance, v_held FROM accounts a WHERE a.id = v_account FOR UPDATE;
            IF NOT FOUND THEN
                v_balance := 0;
                v_held := 0;
            END IF;
        END IF;
        r_id := p_ids[i];
        r_balance := v_balance;
        r_granted := v_balance >= 0 AND v_balance - v_held - v_added >= p_amounts[i];
        IF r_granted THEN
            v_added := v_added + p_amounts[i];
            g_ids := g_ids || p_ids[i];
            g_accounts := g_accounts || p_accounts[i];
            g_amounts := g_amounts || p_amounts[i];
        END IF;
        r_available := v_balance - v_held - v_added;
        RETURN NEXT;
    END LOOP;
    IF v_added > 0 THEN
        UPDATE accounts SET held = held + v_added WHERE id = v_account;
    END IF;
    INSERT INTO holds (id, account, amount, expires_at, origin)
    SELECT g.id, g.account, g.amount, v_expires, p_origin FROM UNNEST(g_ids, g_accounts, g_amounts) AS g(id, account, amount);
END
$$;


-- 2. The ledger's batch planner (DESIGN §3) checks `held` ≥ 0 after every batch, so `quota_apply`
-- now also returns each account's `held` after. Same loop, same lock order (callers sort by id,
-- bytewise), same creation of rows for new accounts.
DROP FUNCTION quota_apply(TEXT[], BIGINT[], BIGINT[], BIGINT);

CREATE FUNCTION quota_apply(p_ids TEXT[], p_balance BIGINT[], p_held BIGINT[], p_now BIGINT)
RETURNS TABLE (r_id TEXT, r_balance BIGINT, r_held BIGINT)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_ids, 1), 0) LOOP
        r_id := p_ids[i];
        UPDATE accounts a SET balance = a.balance + p_balance[i], held = a.held + p_held[i], updated_at = p_now
         WHERE a.id = p_ids[i]
        RETURNING a.balance, a.held INTO r_balance, r_held;
        IF NOT FOUND THEN
            INSERT INTO accounts AS a (id, balance, held, updated_at)
            VALUES (p_ids[i], p_balance[i], p_held[i], p_now)
            ON CONFLICT (id) DO UPDATE SET balance = a.balance + excluded.balance,
                held = a.held + excluded.held, updated_at = excluded.updated_at
            RETURNING a.balance, a.held INTO r_balance, r_held;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
