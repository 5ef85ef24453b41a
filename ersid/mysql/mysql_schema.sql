-- Ersid's tables: mysql -u root -p < mysql_schema.sql
-- (for another database name, change it below and in --mysql-url).
-- Running it again on an older database adds what it lacks (MariaDB; on
-- MySQL, run the ALTER TABLE statements at the end without IF NOT EXISTS).
-- Times are UTC: Ersid's sessions run with time_zone '+00:00'.

CREATE DATABASE IF NOT EXISTS ersid
    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

USE ersid;

-- Keys are UTF-8 bytes: compared and ordered byte for byte (no case
-- folding, no trailing-space equality), which is code point order.
CREATE TABLE IF NOT EXISTS ersid_data (
    ersid_key VARBINARY(255) NOT NULL PRIMARY KEY,
    ersid_value LONGBLOB NOT NULL,
    content_type VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL,
    -- When the key expires (NULL: never), by the database's clock.
    expires_at DATETIME(6) NULL,
    INDEX ersid_expiry (expires_at)
) ENGINE = InnoDB;

-- The store's revision: every write takes the next one, which orders the
-- writes of all Ersid nodes sharing this database.
CREATE TABLE IF NOT EXISTS ersid_revision (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    revision BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;

INSERT IGNORE INTO ersid_revision (id, revision) VALUES (1, 0);

-- Every change, written in the same transaction as the change itself, for
-- the watchers of every node: a put with its value, content type and
-- expiry, a delete with NULL for all three (expired TRUE: an expiry). Commit order is revision order (the counter
-- above serialises writers), so a node reads it by revision, and each
-- node trims it to the newest --watch-history changes (and to those of
-- the last --watch-history-age seconds, if given), by the database's clock.
CREATE TABLE IF NOT EXISTS ersid_changes (
    revision BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    ersid_key VARBINARY(255) NOT NULL,
    ersid_value LONGBLOB NULL,
    content_type VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
    changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at DATETIME(6) NULL,
    expired BOOLEAN NOT NULL DEFAULT FALSE
) ENGINE = InnoDB;

-- What tables made by an older Ersid (before keys could expire) lack.
ALTER TABLE ersid_data
    ADD COLUMN IF NOT EXISTS expires_at DATETIME(6) NULL,
    ADD INDEX IF NOT EXISTS ersid_expiry (expires_at);
ALTER TABLE ersid_changes
    ADD COLUMN IF NOT EXISTS expires_at DATETIME(6) NULL,
    ADD COLUMN IF NOT EXISTS expired BOOLEAN NOT NULL DEFAULT FALSE;
