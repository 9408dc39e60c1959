-- flashgrab schema, version 4: user ids compare exactly.
--
-- The user id is the JWT `sub`, which the app compares byte for byte. The
-- tables' utf8mb4_bin is a PAD SPACE collation: `WHERE user_id = 'alice '`
-- matched 'alice', so a token whose sub had a trailing space listed
-- another user's persisted coupons (and GROUP BY user_id merged the two).
-- The user id columns get a NO PAD binary collation: exact bytes, no
-- padding, no case folding.
--
-- The servers name it differently and neither knows the other's name:
-- MariaDB `utf8mb4_nopad_bin` (10.2+), MySQL 8 `utf8mb4_0900_bin`
-- (8.0.17+). So the statement is built from the one this server has (a
-- server with neither fails here, loudly, and applies nothing). Why not
-- VARBINARY (the same on both): instances still running the previous
-- binary during a rolling upgrade read user_id as text, and a binary
-- column does not decode as text; a collation change is invisible to them.
--
-- Changing the collation of an indexed column rebuilds the table
-- (ALGORITHM=COPY), which blocks writes to it while it runs: on a large
-- coupons table, run `flashgrab migrate` between drops (docs/OPERATIONS.md).

SET @fg_nopad = (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
                 WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')
                 ORDER BY COLLATION_NAME = 'utf8mb4_nopad_bin' DESC LIMIT 1);

SET @fg_sql = CONCAT('ALTER TABLE coupons MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE ',
                     @fg_nopad, ' NOT NULL');
PREPARE fg_stmt FROM @fg_sql;
EXECUTE fg_stmt;
DEALLOCATE PREPARE fg_stmt;

SET @fg_sql = CONCAT('ALTER TABLE redemptions MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE ',
                     @fg_nopad, ' NOT NULL');
PREPARE fg_stmt FROM @fg_sql;
EXECUTE fg_stmt;
DEALLOCATE PREPARE fg_stmt;
