-- Asterisk realtime's ps_auths and sippeers, as Asterisk's alembic scripts
-- (contrib/ast-db-manage/config/versions) create them in PostgreSQL:
-- ps_auths with every column up to Asterisk 22 (43956d550a44, 465f47f880be,
-- abdc9ede147d); sippeers with the columns of 4da0c5f79a9c up to mailbox
-- (the rest are peer options the guard never reads). The enums are
-- PostgreSQL types, as alembic makes them. Rows: the lab's extensions
-- (testdata of internal/ami/amitest): chan_sip 200 (Leaky200), 201 and the
-- carrier trunk; PJSIP auths 300-auth (Leaky300) and 301-auth.

CREATE TYPE pjsip_auth_type_values_v2 AS ENUM ('md5', 'userpass', 'google_oauth');
CREATE TYPE type_values AS ENUM ('friend', 'user', 'peer');
CREATE TYPE sip_transport_values AS ENUM ('udp', 'tcp', 'tls', 'ws', 'wss', 'udp,tcp', 'tcp,udp');
CREATE TYPE sip_dtmfmode_values AS ENUM ('rfc2833', 'info', 'shortinfo', 'inband', 'auto');
CREATE TYPE sip_directmedia_values AS ENUM ('yes', 'no', 'nonat', 'update', 'outgoing');

CREATE TABLE ps_auths (
  id VARCHAR(40) NOT NULL UNIQUE,
  auth_type pjsip_auth_type_values_v2,
  nonce_lifetime INTEGER,
  md5_cred VARCHAR(40),
  password VARCHAR(80),
  realm VARCHAR(40),
  username VARCHAR(40),
  refresh_token VARCHAR(255),
  oauth_clientid VARCHAR(255),
  oauth_secret VARCHAR(255),
  password_digest VARCHAR(1024),
  supported_algorithms_uas VARCHAR(1024),
  supported_algorithms_uac VARCHAR(1024)
);
CREATE INDEX ps_auths_id ON ps_auths (id);

CREATE TABLE sippeers (
  id SERIAL PRIMARY KEY,
  name VARCHAR(40) NOT NULL UNIQUE,
  ipaddr VARCHAR(45),
  port INTEGER,
  regseconds INTEGER,
  defaultuser VARCHAR(40),
  fullcontact VARCHAR(80),
  regserver VARCHAR(20),
  useragent VARCHAR(255),
  lastms INTEGER,
  host VARCHAR(40),
  type type_values,
  context VARCHAR(40),
  permit VARCHAR(95),
  deny VARCHAR(95),
  secret VARCHAR(40),
  md5secret VARCHAR(40),
  remotesecret VARCHAR(40),
  transport sip_transport_values,
  dtmfmode sip_dtmfmode_values,
  directmedia sip_directmedia_values,
  nat VARCHAR(29),
  callgroup VARCHAR(40),
  pickupgroup VARCHAR(40),
  language VARCHAR(40),
  disallow VARCHAR(200),
  allow VARCHAR(200),
  insecure VARCHAR(40),
  callerid VARCHAR(40),
  mailbox VARCHAR(40)
);
CREATE INDEX sippeers_name ON sippeers (name);
CREATE INDEX sippeers_name_host ON sippeers (name, host);
CREATE INDEX sippeers_ipaddr_port ON sippeers (ipaddr, port);

INSERT INTO ps_auths (id, auth_type, password, username) VALUES
  ('300-auth', 'userpass', 'Leaky300', '300'),
  ('301-auth', 'userpass', 'Strong301secret', '301');
INSERT INTO sippeers (name, host, type, context, secret, nat, disallow, allow, callerid) VALUES
  ('200', 'dynamic', 'friend', 'from-internal', 'Leaky200', 'force_rport,comedia', 'all', 'ulaw', '"Alice" <200>'),
  ('201', 'dynamic', 'friend', 'from-internal', 'Strong201secret', 'force_rport,comedia', 'all', 'ulaw', '"Bob" <201>');
INSERT INTO sippeers (name, host, port, type, context, insecure) VALUES
  ('carrier', '127.0.0.9', 5090, 'peer', 'from-carrier', 'port,invite');
