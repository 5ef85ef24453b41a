-- Ersid's tables: mysql -u root -p < mysql_schema.sql
-- (for another database name, change it below and in --mysql-url).
-- Running it again on an older database adds what it lacks.

CREATE DATABASE IF NOT EXISTS ersid
    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

USE ersid;

-- Keys are UTF-8 bytes: compared and ordered byte for byte (no case
-- folding, no trailing-space equality), which is code point order.
CREATE TABLE IF NOT EXISTS ersid_data (
    ersid_key VARBINARY(255) NOT NULL PRIMARY KEY,
    ersid_value LONGBLOB NOT NULL,
    content_type VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;

-- The store's revision: every write takes the next one, which orders the
-- writes of all Ersid nodes sharing this database.
CREATE TABLE IF NOT EXISTS ersid_revision (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    revision BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;

INSERT IGNORE INTO ersid_revision (id, revision) VALUES (1, 0);

-- Every change, written in the same transaction as the change itself, for
-- the watchers of every node: a put with its value and content type, a
-- delete with NULL for both. Commit order is revision order (the counter
-- above serialises writers), so a node reads it by revision, and each
-- node trims it to the newest --watch-history changes (and to those of
-- the last --watch-history-age seconds, if given), by the database's clock.
CREATE TABLE IF NOT EXISTS ersid_changes (
    revision BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    ersid_key VARBINARY(255) NOT NULL,
    ersid_value LONGBLOB NULL,
    content_type VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
    changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB;
