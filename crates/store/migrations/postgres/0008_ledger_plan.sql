-- The ledger's batch planner (DESIGN §3) checks `held` ≥ 0 after every batch, so `quota_apply`
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
