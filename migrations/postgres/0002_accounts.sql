-- Accounts that log in with a password on the platform API: a unique username and an argon2
-- hash (PHC string). Users made by an admin have neither and use API keys only.
ALTER TABLE users ADD COLUMN username TEXT;
ALTER TABLE users ADD COLUMN password_hash TEXT;
CREATE UNIQUE INDEX users_username ON users (username);
