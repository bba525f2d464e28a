package config

import (
	"strings"
	"testing"
)

// Each case is decoded over the defaults, so it holds only what it changes.
// want is the whole error text, word for word.
var badConfigs = []struct {
	name, toml, want string
}{
	// mode
	{"mode unknown", `mode = "active"`, `mode: "active" is not one of observe, enforce`},
	{"mode case", `mode = "Enforce"`, `mode: "Enforce" is not one of observe, enforce`},
	{"mode empty", `mode = ""`, `mode: "" is not one of observe, enforce`},

	// [ami]
	{"address without port", `ami.address = "localhost"`, `ami.address: "localhost" must be host:port or tls://host:port`},
	{"address empty", `ami.address = ""`, `ami.address: "" must be host:port or tls://host:port`},
	{"address without host", `ami.address = ":5038"`, `ami.address: ":5038" must be host:port or tls://host:port`},
	{"address with space", `ami.address = "my host:5038"`, `ami.address: "my host:5038" must be host:port or tls://host:port`},
	{"address port name", `ami.address = "localhost:ami"`, `ami.address: "localhost:ami": the port must be a number from 1 to 65535`},
	{"address port 0", `ami.address = "[::1]:0"`, `ami.address: "[::1]:0": the port must be a number from 1 to 65535`},
	{"address port too big", `ami.address = "10.0.0.1:65536"`, `ami.address: "10.0.0.1:65536": the port must be a number from 1 to 65535`},
	{"username empty", `ami.username = ""`, `ami.username must not be empty`},
	{"username LF", `ami.username = "guard\nAction: Originate"`, `ami.username must not contain control characters`},
	{"username CR", `ami.username = "guard\r"`, `ami.username must not contain control characters`},
	{"username DEL", `ami.username = "gu\u007fard"`, `ami.username must not contain control characters`},
	{"secret LF", `ami.secret = "s3cret\nAction: Logoff"`, `ami.secret must not contain CR or LF`},
	{"secret CR", `ami.secret = "s3cret\r"`, `ami.secret must not contain CR or LF`},
	{"address other scheme", `ami.address = "tcp://127.0.0.1:5038"`, `ami.address: "tcp://127.0.0.1:5038" must be host:port or tls://host:port`},
	{"address tls without port", `ami.address = "tls://pbx.example.net"`, `ami.address: "tls://pbx.example.net" must be host:port or tls://host:port`},
	{"address tls port 0", `ami.address = "tls://[::1]:0"`, `ami.address: "tls://[::1]:0": the port must be a number from 1 to 65535`},
	{"auth unknown", `ami.auth = "sha1"`, `ami.auth: "sha1" is not one of md5, plain`},
	{"auth empty", `ami.auth = ""`, `ami.auth: "" is not one of md5, plain`},
	{"tls_ca without tls", `ami.tls_ca = "/etc/astguard/ca.pem"`, `ami.tls_ca is set but ami.address does not start with tls://`},
	{"tls_server_name without tls", `ami.tls_server_name = "pbx"`, `ami.tls_server_name is set but ami.address does not start with tls://`},
	{"tls_server_name with space", "[ami]\naddress = \"tls://127.0.0.1:5039\"\ntls_server_name = \"p bx\"", `ami.tls_server_name must not contain spaces or control characters`},
	{"reconnect_max 0", `ami.reconnect_max = "0s"`, `ami.reconnect_max must be > 0`},
	{"keepalive 0", `ami.keepalive = "0s"`, `ami.keepalive must be > 0`},
	{"reconnect_interval 0", `ami.reconnect_interval = "0s"`, `ami.reconnect_interval must be > 0`},
	{"reconnect_interval negative", `ami.reconnect_interval = "-2s"`, `ami.reconnect_interval must be > 0`},
	{"action_timeout 0", `ami.action_timeout = "0s"`, `ami.action_timeout must be > 0`},
	{"action_timeout negative", `ami.action_timeout = "-1ms"`, `ami.action_timeout must be > 0`},
	{"queue_size too small", `ami.queue_size = 1023`, `ami.queue_size must be between 1024 and 16777216`},
	{"queue_size 0", `ami.queue_size = 0`, `ami.queue_size must be between 1024 and 16777216`},
	{"queue_size too large", `ami.queue_size = 16777217`, `ami.queue_size must be between 1024 and 16777216`},

	// [log]
	{"log level", `log.level = "loud"`, `log.level: "loud" is not one of debug, info, warn, error`},
	{"log level case", `log.level = "INFO"`, `log.level: "INFO" is not one of debug, info, warn, error`},

	// [metrics]
	{"metrics listen without port", `metrics.listen = "x"`, `metrics.listen: "x" must be host:port`},
	{"metrics listen without host", `metrics.listen = ":9464"`, `metrics.listen: ":9464" must be host:port`},
	{"metrics listen with space", `metrics.listen = "my host:9464"`, `metrics.listen: "my host:9464" must be host:port`},
	{"metrics listen URL", `metrics.listen = "http://127.0.0.1:9464/metrics"`,
		`metrics.listen: "http://127.0.0.1:9464/metrics" must be host:port`},
	{"metrics listen port name", `metrics.listen = "127.0.0.1:prometheus"`,
		`metrics.listen: "127.0.0.1:prometheus": the port must be a number from 1 to 65535`},
	{"metrics listen port 0", `metrics.listen = "127.0.0.1:0"`,
		`metrics.listen: "127.0.0.1:0": the port must be a number from 1 to 65535`},
	{"metrics listen port too big", `metrics.listen = "[::1]:65536"`,
		`metrics.listen: "[::1]:65536": the port must be a number from 1 to 65535`},
	{"silence_alarm 0", `metrics.silence_alarm = "0s"`, `metrics.silence_alarm must be > 0`},
	{"silence_alarm negative", `metrics.silence_alarm = "-5m"`, `metrics.silence_alarm must be > 0`},
	{"silence_alarm as integer", `metrics.silence_alarm = 300`,
		`metrics.silence_alarm: 300 is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"metrics listen as integer", `metrics.listen = 9464`, `metrics.listen must be a string, not an integer`},
	{"metrics unknown key", "[metrics]\nport = 9464", `unknown key metrics.port`},

	// [detector]
	{"cooldown 0", `detector.cooldown = "0s"`, `detector.cooldown must be > 0`},
	{"cooldown negative", `detector.cooldown = "-5m"`, `detector.cooldown must be > 0`},
	{"max_extensions 0", `detector.max_extensions = 0`, `detector.max_extensions must be >= 1`},
	{"max_addresses negative", `detector.max_addresses = -1`, `detector.max_addresses must be >= 1`},
	{"idle_expiry 0", `detector.idle_expiry = "0s"`, `detector.idle_expiry must be > 0`},
	{"idle_expiry below a window", `detector.idle_expiry = "5m"`,
		`detector.idle_expiry (5m) must not be shorter than detector.prefix_guess.window (10m)`},
	{"idle_expiry below the longest window", "detector.idle_expiry = \"30m\"\n[detector.failed_probes]\nwindow = \"1h30m\"",
		`detector.idle_expiry (30m) must not be shorter than detector.failed_probes.window (1h30m)`},

	// [detector.call_rate]
	{"burst_window 0", `detector.call_rate.burst_window = "0s"`, `detector.call_rate.burst_window must be > 0`},
	{"burst_warning negative", `detector.call_rate.burst_warning = -1`, `detector.call_rate.burst_warning must be >= 0`},
	{"burst_critical negative", `detector.call_rate.burst_critical = -1`, `detector.call_rate.burst_critical must be >= 0`},
	{"burst warning above critical", `detector.call_rate.burst_warning = 9`,
		`detector.call_rate.burst_warning (9) must be below detector.call_rate.burst_critical (5)`},
	{"call_rate window", `detector.call_rate.window = "-1m"`, `detector.call_rate.window must be > 0`},
	{"call_rate warning negative", `detector.call_rate.warning = -30`, `detector.call_rate.warning must be >= 0`},
	{"call_rate critical negative", `detector.call_rate.critical = -60`, `detector.call_rate.critical must be >= 0`},
	{"call_rate warning equals critical", `detector.call_rate.warning = 60`,
		`detector.call_rate.warning (60) must be below detector.call_rate.critical (60)`},

	// [detector.concurrent]
	{"concurrent warning negative", `detector.concurrent.warning = -4`, `detector.concurrent.warning must be >= 0`},
	{"concurrent critical negative", `detector.concurrent.critical = -8`, `detector.concurrent.critical must be >= 0`},
	{"concurrent order", "[detector.concurrent]\nwarning = 8\ncritical = 4",
		`detector.concurrent.warning (8) must be below detector.concurrent.critical (4)`},

	// [detector.prefix_guess]
	{"digits too few", `detector.prefix_guess.digits = 3`, `detector.prefix_guess.digits must be between 4 and 15`},
	{"digits too many", `detector.prefix_guess.digits = 16`, `detector.prefix_guess.digits must be between 4 and 15`},
	{"prefix_guess window", `detector.prefix_guess.window = "0s"`, `detector.prefix_guess.window must be > 0`},
	{"prefix_guess warning negative", `detector.prefix_guess.warning = -2`, `detector.prefix_guess.warning must be >= 0`},
	{"prefix_guess critical negative", `detector.prefix_guess.critical = -3`, `detector.prefix_guess.critical must be >= 0`},
	{"prefix_guess order", `detector.prefix_guess.warning = 4`,
		`detector.prefix_guess.warning (4) must be below detector.prefix_guess.critical (3)`},

	// [detector.international]
	{"access code hex", `detector.international.access_codes = ["00", "0x1"]`,
		`detector.international.access_codes: "0x1" is not a dialling code (digits, optionally after a leading +)`},
	{"access code empty", `detector.international.access_codes = [""]`,
		`detector.international.access_codes: "" is not a dialling code (digits, optionally after a leading +)`},
	{"access code plus inside", `detector.international.access_codes = ["0+0"]`,
		`detector.international.access_codes: "0+0" is not a dialling code (digits, optionally after a leading +)`},
	{"access codes none", `detector.international.access_codes = []`,
		`detector.international.access_codes must not be empty while the international levels are not all 0`},
	{"outside line", `detector.international.outside_line = "9a"`,
		`detector.international.outside_line: "9a" is not an outside-line prefix (digits only)`},
	{"international window", `detector.international.window = "0s"`, `detector.international.window must be > 0`},
	{"international warning negative", `detector.international.warning = -1`, `detector.international.warning must be >= 0`},
	{"international critical negative", `detector.international.critical = -1`, `detector.international.critical must be >= 0`},
	{"international order", `detector.international.warning = 25`,
		`detector.international.warning (25) must be below detector.international.critical (20)`},
	{"high risk letters", `detector.international.high_risk_countries = ["53", "12a"]`,
		`detector.international.high_risk_countries: "12a" is not a country code (1 to 6 digits)`},
	{"high risk empty", `detector.international.high_risk_countries = [""]`,
		`detector.international.high_risk_countries: "" is not a country code (1 to 6 digits)`},
	{"high risk too long", `detector.international.high_risk_countries = ["1234567"]`,
		`detector.international.high_risk_countries: "1234567" is not a country code (1 to 6 digits)`},
	{"high risk plus", `detector.international.high_risk_countries = ["+53"]`,
		`detector.international.high_risk_countries: "+53" is not a country code (1 to 6 digits)`},
	{"high_risk_warning negative", `detector.international.high_risk_warning = -1`,
		`detector.international.high_risk_warning must be >= 0`},
	{"high_risk_critical negative", `detector.international.high_risk_critical = -1`,
		`detector.international.high_risk_critical must be >= 0`},
	{"high risk order", `detector.international.high_risk_warning = 3`,
		`detector.international.high_risk_warning (3) must be below detector.international.high_risk_critical (3)`},

	// [detector.failed_probes] and [detector.auth_failures]
	{"failed_probes window", `detector.failed_probes.window = "0s"`, `detector.failed_probes.window must be > 0`},
	{"failed_probes warning negative", `detector.failed_probes.warning = -3`, `detector.failed_probes.warning must be >= 0`},
	{"failed_probes critical negative", `detector.failed_probes.critical = -5`, `detector.failed_probes.critical must be >= 0`},
	{"failed_probes order", `detector.failed_probes.warning = 6`,
		`detector.failed_probes.warning (6) must be below detector.failed_probes.critical (5)`},
	{"auth_failures window", `detector.auth_failures.window = "-1s"`, `detector.auth_failures.window must be > 0`},
	{"auth_failures warning negative", `detector.auth_failures.warning = -1`, `detector.auth_failures.warning must be >= 0`},
	{"auth_failures critical negative", `detector.auth_failures.critical = -1`, `detector.auth_failures.critical must be >= 0`},
	{"auth_failures order", "[detector.auth_failures]\nwarning = 7\ncritical = 5",
		`detector.auth_failures.warning (7) must be below detector.auth_failures.critical (5)`},

	// [allow]
	{"extension with space", `allow.extensions = ["bad name"]`, `allow.extensions: "bad name" is not an extension name`},
	{"extension empty", `allow.extensions = [""]`, `allow.extensions: "" is not an extension name`},
	{"extension two slashes", `allow.extensions = ["SIP/a/b"]`, `allow.extensions: "SIP/a/b" is not an extension name`},
	{"extension no tech", `allow.extensions = ["/trunk"]`, `allow.extensions: "/trunk" is not an extension name`},
	{"extension no name", `allow.extensions = ["SIP/"]`, `allow.extensions: "SIP/" is not an extension name`},
	{"extension non-ASCII", `allow.extensions = ["trünk"]`, `allow.extensions: "trünk" is not an extension name`},
	{"extension tab", `allow.extensions = ["a\tb"]`, `allow.extensions: "a\tb" is not an extension name`},
	{"network bits", `allow.networks = ["10.0.0.0/33"]`, `allow.networks[0]: "10.0.0.0/33" is not an IP address or CIDR network`},
	{"network name", `allow.networks = ["localhost"]`, `allow.networks[0]: "localhost" is not an IP address or CIDR network`},
	{"network zone", `allow.networks = ["fe80::1%eth0"]`, `allow.networks[0]: "fe80::1%eth0" is not an IP address or CIDR network`},
	{"network empty", `allow.networks = [""]`, `allow.networks[0]: "" is not an IP address or CIDR network`},
	{"network everything", `allow.networks = ["0.0.0.0/0"]`,
		`allow.networks[0]: "0.0.0.0/0" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "0.0.0.0/0" to confirm_wide in [allow]`},
	{"network wide IPv6", `allow.networks = ["2001:db8::/32", "2000::/3"]`,
		`allow.networks[1]: "2000::/3" is wider than /32 (allow.widest_ipv6), so no address in it would ever be counted or blocked; if you mean it, add "2000::/3" to confirm_wide in [allow]`},
	{"network wide mapped", `allow.networks = ["::ffff:0.0.0.0/100"]`,
		`allow.networks[0]: "::ffff:0.0.0.0/100" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "::ffff:0.0.0.0/100" to confirm_wide in [allow]`},
	{"network host bits", `allow.networks = ["192.0.2.0/24", "10.1.2.3/8"]`,
		`allow.networks[1]: "10.1.2.3/8" has host bits set: write 10.0.0.0/8 for the network or 10.1.2.3/32 for the address`},
	{"network host bits IPv6", `allow.networks = ["2001:db8::1/64"]`,
		`allow.networks[0]: "2001:db8::1/64" has host bits set: write 2001:db8::/64 for the network or 2001:db8::1/128 for the address`},
	{"network wide within a raised limit", "[allow]\nwidest_ipv4 = 16\nnetworks = [\"10.0.0.0/8\"]",
		`allow.networks[0]: "10.0.0.0/8" is wider than /16 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "10.0.0.0/8" to confirm_wide in [allow]`},
	// A confirmation is of one network: a typo next to it is not confirmed.
	{"network confirmed is another", "[allow]\nnetworks = [\"0.0.0.0/0\", \"0.0.0.0/1\"]\nconfirm_wide = [\"0.0.0.0/0\"]",
		`allow.networks[1]: "0.0.0.0/1" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "0.0.0.0/1" to confirm_wide in [allow]`},
	{"widest_ipv4 negative", `allow.widest_ipv4 = -1`, `allow.widest_ipv4 must be between 0 and 32`},
	{"widest_ipv4 too large", `allow.widest_ipv4 = 33`, `allow.widest_ipv4 must be between 0 and 32`},
	{"widest_ipv6 too large", `allow.widest_ipv6 = 129`, `allow.widest_ipv6 must be between 0 and 128`},
	{"confirm_wide of nothing", `allow.confirm_wide = ["0.0.0.0/0"]`,
		`allow.confirm_wide[0]: "0.0.0.0/0" confirms nothing: it is not a network of allow.networks or response.never_block`},
	{"confirm_wide typo", "[allow]\nnetworks = [\"0.0.0.0/0\"]\nconfirm_wide = [\"0.0.0.0/0\", \"10.0.0.0/0\", \"x\"]",
		"allow.confirm_wide[1]: \"10.0.0.0/0\" has host bits set: write 0.0.0.0/0 for the network or 10.0.0.0/32 for the address\n" +
			`allow.confirm_wide[2]: "x" is not an IP address or CIDR network`},
	{"confirm_wide as string", `allow.confirm_wide = "0.0.0.0/0"`, `allow.confirm_wide must be a list of strings, not a string`},
	{"destination letters", `allow.destinations = ["11a"]`,
		`allow.destinations: "11a" is not a dialled prefix (digits, optionally after a leading +)`},
	{"destination empty", `allow.destinations = [""]`,
		`allow.destinations: "" is not a dialled prefix (digits, optionally after a leading +)`},
	{"destination plus only", `allow.destinations = ["+"]`,
		`allow.destinations: "+" is not a dialled prefix (digits, optionally after a leading +)`},

	// [response]
	{"ban_duration 0", `response.ban_duration = "0s"`, `response.ban_duration must be > 0`},
	{"ban_duration negative", `response.ban_duration = "-24h"`, `response.ban_duration must be > 0`},
	{"incident_quiet 0", `response.incident_quiet = "0s"`, `response.incident_quiet must be > 0`},
	{"incident_quiet negative", `response.incident_quiet = "-15m"`, `response.incident_quiet must be > 0`},
	{"incident_quiet below cooldown", `response.incident_quiet = "4m"`,
		`response.incident_quiet (4m) must not be shorter than detector.cooldown (5m)`},
	{"incident_quiet below a raised cooldown", "detector.cooldown = \"20m\"\n[response]\nincident_quiet = \"15m\"",
		`response.incident_quiet (15m) must not be shorter than detector.cooldown (20m)`},
	{"firewall unknown", `response.firewall = "nft"`, `response.firewall: "nft" is not one of iptables, dry-run`},
	{"firewall empty", `response.firewall = ""`, `response.firewall: "" is not one of iptables, dry-run`},
	{"chain with space", `response.chain = "BAD CHAIN"`, `response.chain: "BAD CHAIN" must be 1 to 28 letters, digits, _ or -`},
	{"chain empty", `response.chain = ""`, `response.chain: "" must be 1 to 28 letters, digits, _ or -`},
	{"chain too long", `response.chain = "ASTGUARD-ASTGUARD-ASTGUARD-XY"`, // 29
		`response.chain: "ASTGUARD-ASTGUARD-ASTGUARD-XY" must be 1 to 28 letters, digits, _ or -`},
	{"chain non-ASCII", `response.chain = "WÄCHTER"`, `response.chain: "WÄCHTER" must be 1 to 28 letters, digits, _ or -`},
	{"chain option-like", `response.chain = "-F"`, `response.chain: "-F" must not start with -`},
	{"chain built-in", `response.chain = "INPUT"`, `response.chain: "INPUT" is a built-in chain or verdict of iptables`},
	{"chain verdict", `response.chain = "DROP"`, `response.chain: "DROP" is a built-in chain or verdict of iptables`},
	{"state_file empty", `response.state_file = ""`, `response.state_file must not be empty`},
	{"secrets_file empty", `response.secrets_file = ""`, `response.secrets_file must not be empty`},
	{"admin_socket empty", `response.admin_socket = ""`, `response.admin_socket must not be empty`},
	{"state_file relative", `response.state_file = "bans.json"`, `response.state_file: "bans.json" must be an absolute path`},
	{"secrets_file relative", `response.secrets_file = "./secrets.jsonl"`,
		`response.secrets_file: "./secrets.jsonl" must be an absolute path`},
	{"admin_socket relative", `response.admin_socket = "run/admin.sock"`,
		`response.admin_socket: "run/admin.sock" must be an absolute path`},
	{"secrets_file is state_file", `response.secrets_file = "/var/lib/astguard/./bans.json"`,
		`response.secrets_file: "/var/lib/astguard/./bans.json" is the same file as response.state_file`},
	{"admin_socket is both files", "[response]\nstate_file = \"/tmp/x\"\nsecrets_file = \"/tmp/x\"\nadmin_socket = \"/tmp//x\"",
		"response.secrets_file: \"/tmp/x\" is the same file as response.state_file\n" +
			"response.admin_socket: \"/tmp//x\" is the same file as response.state_file\n" +
			"response.admin_socket: \"/tmp//x\" is the same file as response.secrets_file"},
	{"admin_socket too long", `response.admin_socket = "/run/` + strings.Repeat("a", 103) + `"`,
		`response.admin_socket is longer than 107 bytes, the limit of a Unix socket path`},
	{"never_block name", `response.never_block = ["x"]`, `response.never_block[0]: "x" is not an IP address or CIDR network`},
	{"never_block bits", `response.never_block = ["192.0.2.0/24", "2001:db8::/129"]`,
		`response.never_block[1]: "2001:db8::/129" is not an IP address or CIDR network`},
	{"never_block zone", `response.never_block = ["fe80::1%eth0"]`,
		`response.never_block[0]: "fe80::1%eth0" is not an IP address or CIDR network`},
	// The typo that switched blocking off for half of IPv4.
	{"never_block typo", `response.never_block = ["10.1.2.3/1"]`,
		`response.never_block[0]: "10.1.2.3/1" has host bits set: write 0.0.0.0/1 for the network or 10.1.2.3/32 for the address`},
	{"never_block wide", `response.never_block = ["192.0.2.7", "128.0.0.0/1"]`,
		`response.never_block[1]: "128.0.0.0/1" is wider than /8 (allow.widest_ipv4), so no address in it would ever be blocked; if you mean it, add "128.0.0.0/1" to confirm_wide in [allow]`},
	{"never_block wide IPv6", `response.never_block = ["::/0"]`,
		`response.never_block[0]: "::/0" is wider than /32 (allow.widest_ipv6), so no address in it would ever be blocked; if you mean it, add "::/0" to confirm_wide in [allow]`},
	{"firewall_match", `response.firewall_match = "nft"`, `response.firewall_match: "nft" is not one of auto, ipset, rules`},
	{"ipv6_prefix too short", `response.ipv6_prefix = 31`, `response.ipv6_prefix must be between 32 and 128`},
	{"ipv6_prefix too long", `response.ipv6_prefix = 129`, `response.ipv6_prefix must be between 32 and 128`},
	{"protect_previous_sources negative", `response.protect_previous_sources = "-1s"`,
		`response.protect_previous_sources must be >= 0`},
	{"hangup_cause negative", `response.hangup_cause = -1`, `response.hangup_cause must be between 0 and 127`},
	{"hangup_cause too large", `response.hangup_cause = 128`, `response.hangup_cause must be between 0 and 127`},
	{"retry_max 0", `response.retry_max = 0`, `response.retry_max must be between 1 and 100`},
	{"retry_max too large", `response.retry_max = 101`, `response.retry_max must be between 1 and 100`},
	{"retry_backoff 0", `response.retry_backoff = "0s"`, `response.retry_backoff must be > 0`},
	{"retry_backoff negative", `response.retry_backoff = "-200ms"`, `response.retry_backoff must be > 0`},

	// [secrets]
	{"secrets store unknown", `secrets.store = "database"`, `secrets.store: "database" is not one of auto, files, freepbx, realtime`},
	{"secrets freepbx conf relative", `secrets.freepbx.conf = "freepbx.conf"`, `secrets.freepbx.conf: "freepbx.conf" must be an absolute path`},
	{"secrets freepbx conf empty", `secrets.freepbx.conf = ""`, `secrets.freepbx.conf must not be empty`},
	{"secrets freepbx dsn with password", `secrets.freepbx.dsn = "mysql://astguard:hunter2@localhost/asterisk?socket=/run/mysqld/mysqld.sock"`,
		`secrets.freepbx.dsn: must not hold a password: put it in password_file or the environment`},
	{"secrets freepbx dsn postgres", `secrets.freepbx.dsn = "postgres://astguard@db/asterisk"`,
		`secrets.freepbx.dsn: FreePBX's database is MySQL or MariaDB: use mysql://`},
	{"secrets freepbx dsn no host", `secrets.freepbx.dsn = "mysql://astguard@/asterisk"`,
		`secrets.freepbx.dsn: names no host: mysql://USER@HOST/DB, or ?socket=PATH for a unix socket`},
	{"secrets freepbx password_file without dsn", `secrets.freepbx.password_file = "/etc/astguard/db"`,
		`secrets.freepbx.password_file is set but secrets.freepbx.dsn is empty`},
	{"secrets freepbx password_file relative", "[secrets.freepbx]\ndsn = \"mysql://a@db/asterisk\"\npassword_file = \"db\"",
		`secrets.freepbx.password_file: "db" must be an absolute path`},
	{"secrets reload_command empty", `secrets.freepbx.reload_command = []`, `secrets.freepbx.reload_command must name a command`},
	{"secrets reload_command NUL", `secrets.freepbx.reload_command = ["fwconsole", "re\u0000load"]`, `secrets.freepbx.reload_command must not contain NUL`},
	{"secrets reload_timeout 0", `secrets.freepbx.reload_timeout = "0s"`, `secrets.freepbx.reload_timeout must be > 0`},
	{"secrets realtime without dsn", `secrets.store = "realtime"`, `secrets.realtime.dsn must be set when secrets.store is "realtime"`},
	{"secrets realtime dsn scheme", `secrets.realtime.dsn = "odbc://asterisk"`, `secrets.realtime.dsn: "odbc://" is not a database the guard speaks: mysql:// or postgres://`},
	{"secrets realtime dsn user", `secrets.realtime.dsn = "postgres://db:5432/asterisk"`, `secrets.realtime.dsn: names no user: postgres://USER@...`},
	{"secrets realtime dsn database", `secrets.realtime.dsn = "mysql://a@db:3306/"`, `secrets.realtime.dsn: names no database: .../DB`},
	{"secrets realtime dsn parameter", `secrets.realtime.dsn = "mysql://a@db/asterisk?tls=skip-verify"`, `secrets.realtime.dsn: parameter "tls" is not one of socket`},
	{"secrets realtime dsn port", `secrets.realtime.dsn = "postgres://a@db:0/asterisk"`, `secrets.realtime.dsn: port "0" must be a number from 1 to 65535`},
	{"secrets realtime dsn password", `secrets.realtime.dsn = "postgres://a:pw@db/asterisk"`, `secrets.realtime.dsn: must not hold a password: put it in password_file or the environment`},
	{"secrets realtime table", `secrets.realtime.ps_auths = "ps_auths; DROP TABLE sippeers"`,
		`secrets.realtime.ps_auths: "ps_auths; DROP TABLE sippeers" must be a table name: 1 to 63 letters, digits or _, not starting with a digit`},
	{"secrets realtime table quote", "secrets.realtime.sippeers = \"sip`peers\"",
		"secrets.realtime.sippeers: \"sip`peers\" must be a table name: 1 to 63 letters, digits or _, not starting with a digit"},
	{"secrets realtime table digit", `secrets.realtime.sippeers = "1peers"`,
		`secrets.realtime.sippeers: "1peers" must be a table name: 1 to 63 letters, digits or _, not starting with a digit`},
	{"secrets realtime cache", `secrets.realtime.auth_cache = "auths\r\nAction: Command"`,
		`secrets.realtime.auth_cache: "auths\r\nAction: Command" must be 1 to 64 letters, digits or - _ .`},

	// [policy]
	{"policy unknown action", `policy.call_rate.critical = ["alert", "nuke"]`,
		`policy.call_rate.critical: "nuke" is not one of alert, hangup, rotate_secret, block_ip`},
	{"policy action case", `policy.new_source.warning = ["Alert"]`,
		`policy.new_source.warning: "Alert" is not one of alert, hangup, rotate_secret, block_ip`},
	{"policy action empty", `policy.concurrent.warning = [""]`,
		`policy.concurrent.warning: "" is not one of alert, hangup, rotate_secret, block_ip`},
	{"policy duplicate", `policy.call_rate.critical = ["hangup", "alert", "hangup"]`,
		`policy.call_rate.critical: "hangup" is listed twice`},
	{"policy thrice is reported once", `policy.auth_failures.critical = ["block_ip", "block_ip", "block_ip"]`,
		`policy.auth_failures.critical: "block_ip" is listed twice`},
	{"policy every rule and severity", `
[policy.call_rate]
warning = ["x1"]
[policy.concurrent]
critical = ["x2"]
[policy.prefix_guess]
warning = ["x3"]
[policy.international]
critical = ["x4"]
[policy.failed_probes]
warning = ["x5"]
[policy.auth_failures]
critical = ["x6"]
[policy.new_source]
warning = ["alert", "alert"]
critical = ["x7", "x7"]
`, strings.Join([]string{
		`policy.call_rate.warning: "x1" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.concurrent.critical: "x2" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.prefix_guess.warning: "x3" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.international.critical: "x4" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.failed_probes.warning: "x5" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.auth_failures.critical: "x6" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.new_source.warning: "alert" is listed twice`,
		`policy.new_source.critical: "x7" is not one of alert, hangup, rotate_secret, block_ip`,
		`policy.new_source.critical: "x7" is listed twice`,
	}, "\n")},
	{"policy unknown rule", "[policy.high_risk]\ncritical = [\"alert\"]", `unknown key policy.high_risk`},
	{"policy unknown severity", `policy.call_rate.info = ["alert"]`, `unknown key policy.call_rate.info`},
	{"policy list as string", `policy.call_rate.critical = "block_ip"`,
		`policy.call_rate.critical must be a list of strings, not a string`},
	{"policy as list", `policy = ["alert"]`, `policy must be a table, not an array`},

	// [crowdsec]
	{"crowdsec url empty", "[crowdsec]\npull = true\nurl = \"\"",
		`crowdsec.url: must be set while crowdsec.push or crowdsec.pull is true (e.g. "http://127.0.0.1:8080/")`},
	{"crowdsec url scheme", `crowdsec.url = "ftp://lapi:8080/"`, `crowdsec.url: "ftp://lapi:8080/" must be an http:// or https:// URL with a host`},
	{"crowdsec url without host", `crowdsec.url = "http:///v1"`, `crowdsec.url: "http:///v1" must be an http:// or https:// URL with a host`},
	{"crowdsec url with credentials", `crowdsec.url = "http://guard:s3cretpw@lapi:8080/"`,
		`crowdsec.url: "http://lapi:8080/" must not hold credentials: use crowdsec.password or crowdsec.api_key`},
	{"crowdsec url with query", `crowdsec.url = "http://lapi:8080/?x=1"`, `crowdsec.url: "http://lapi:8080/?x=1" must have no query or fragment`},
	{"crowdsec timeout 0", `crowdsec.timeout = "0s"`, `crowdsec.timeout must be > 0`},
	{"crowdsec machine_id empty", "[crowdsec]\npush = true", `crowdsec.machine_id must not be empty while crowdsec.push is true`},
	{"crowdsec machine_id space", "[crowdsec]\npush = true\nmachine_id = \"pbx 1\"", `crowdsec.machine_id must not contain spaces or control characters`},
	{"crowdsec password LF", `crowdsec.password = "pw\nx"`, `crowdsec.password must not contain CR or LF`},
	{"crowdsec api_key CR", `crowdsec.api_key = "key\r"`, `crowdsec.api_key must not contain CR or LF`},
	{"crowdsec pull_interval too short", `crowdsec.pull_interval = "500ms"`, `crowdsec.pull_interval must be at least 1s`},
	{"crowdsec scenario with comma", `crowdsec.scenarios_containing = ["astguard/,ssh"]`,
		`crowdsec.scenarios_containing[0]: "astguard/,ssh" must be a word without commas, spaces or control characters`},
	{"crowdsec scenario with space", `crowdsec.scenarios_not_containing = ["a b"]`,
		`crowdsec.scenarios_not_containing[0]: "a b" must be a word without commas, spaces or control characters`},
	{"crowdsec origin empty", `crowdsec.origins = ["crowdsec", ""]`,
		`crowdsec.origins[1]: "" must be a word without commas, spaces or control characters`},
	{"crowdsec widest_ipv4", `crowdsec.widest_ipv4 = 33`, `crowdsec.widest_ipv4 must be between 0 and 32`},
	{"crowdsec widest_ipv6", `crowdsec.widest_ipv6 = -1`, `crowdsec.widest_ipv6 must be between 0 and 128`},
	{"crowdsec unknown key", "[crowdsec]\nenabled = true", `unknown key crowdsec.enabled`},

	// Unknown keys.
	{"unknown top-level key", `foo = 1`, `unknown key foo`},
	{"unknown top-level table", "[foo]\nbar = 1", `unknown key foo`},
	{"unknown nested key", "[detector]\nfoo = 1", `unknown key detector.foo`},
	{"unknown nested table", "[detector.foo]\nbar = 1\nbaz = 2", `unknown key detector.foo`},
	{"unknown dotted key", `detector.call_rate.x.y = 1`, `unknown key detector.call_rate.x`},
	{"unknown key in inline table", `ami = {address = "127.0.0.1:5038", port = 5038}`, `unknown key ami.port`},
	{"unknown array of tables", "[[allow.rule]]\nx = 1\n[[allow.rule]]\nx = 2", `unknown key allow.rule`},
	{"unknown key is case-sensitive", "[AMI]\naddress = \"127.0.0.1:5038\"", `unknown key AMI`},
	{"unknown nested key is case-sensitive", "[ami]\nAddress = \"127.0.0.1:5038\"", `unknown key ami.Address`},
	{"unknown quoted key", `detector."call rate" = 1`, `unknown key detector."call rate"`},
	{"several unknown keys in file order", "zzz = 1\n[ami]\nport = 1\n[detector.foo]\nx = 1\n[[detector.call_rate.rules]]\n[allow]\naaa = []",
		"unknown key zzz\nunknown key ami.port\nunknown key detector.foo\nunknown key detector.call_rate.rules\nunknown key allow.aaa"},

	// Wrong types.
	{"duration as integer", `detector.prefix_guess.window = 600`,
		`detector.prefix_guess.window: 600 is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"duration zero integer", `detector.cooldown = 0`,
		`detector.cooldown: 0 is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"duration as float", `detector.cooldown = 1.5`,
		`detector.cooldown: 1.5 is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"duration bad string", `detector.idle_expiry = "1 day"`,
		`detector.idle_expiry: "1 day" is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"duration without unit", `detector.call_rate.window = "60"`,
		`detector.call_rate.window: "60" is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"duration as boolean", `detector.cooldown = true`, `detector.cooldown must be a duration, not a boolean`},
	{"duration as table", "[detector.cooldown]\nminutes = 5", `detector.cooldown must be a duration, not a table`},
	{"integer as string", `detector.call_rate.warning = "30"`, `detector.call_rate.warning must be an integer, not a string`},
	{"integer as float", `detector.max_addresses = 1e5`, `detector.max_addresses must be an integer, not a float`},
	{"string as integer", `ami.username = 1000`, `ami.username must be a string, not an integer`},
	{"string as date", `ami.secret = 2024-01-01`, `ami.secret must be a string, not a date-time`},
	{"bool as string", `detector.new_source.enabled = "yes"`, `detector.new_source.enabled must be true or false, not a string`},
	{"list as string", `allow.networks = "192.0.2.0/24"`, `allow.networks must be a list of strings, not a string`},
	{"list item not a string", `detector.international.access_codes = ["00", 11]`,
		`detector.international.access_codes must be a list of strings, but item 2 is an integer`},
	{"list of inline tables", `allow.networks = [{net = "192.0.2.0/24"}]`,
		`allow.networks must be a list of strings, but item 1 is a table`},
	{"list as array of tables", "[[allow.networks]]\nnet = \"192.0.2.0/24\"", `allow.networks must be a list of strings, not an array of tables`},
	{"leaf with dotted keys below", `allow.networks.v4 = "192.0.2.0/24"`, `allow.networks must be a list of strings, not a table`},
	{"table as value", `detector = 5`, `detector must be a table, not an integer`},
	{"mode as integer", `mode = 1`, `mode must be a string, not an integer`},
	{"ipv6 as string", `response.ipv6 = "yes"`, `response.ipv6 must be true or false, not a string`},
	{"queue_size as float", `ami.queue_size = 65536.0`, `ami.queue_size must be an integer, not a float`},
	{"ban_duration as integer", `response.ban_duration = 86400`,
		`response.ban_duration: 86400 is not a duration (a quoted string like "60s", "10m" or "1h")`},
	{"table as array of tables", "[[ami]]\naddress = \"127.0.0.1:5038\"", `ami must be a table, not an array of tables`},
	{"types and unknown keys together", "[ami]\nusername = 5\nfoo = 1\n[detector]\ncooldown = 300",
		"ami.username must be a string, not an integer\nunknown key ami.foo\n" +
			`detector.cooldown: 300 is not a duration (a quoted string like "60s", "10m" or "1h")`},

	// Validate reports every problem, in the order of the example file.
	{"every problem at once", `
mode = "active"
[ami]
address = "localhost"
username = ""
queue_size = 1
[log]
level = "loud"
[metrics]
listen = "9464"
silence_alarm = "0s"
[detector.prefix_guess]
digits = 3
window = "0s"
[allow]
networks = ["10.0.0.0/33", "192.0.2.1"]
extensions = ["bad name"]
[response]
retry_max = 0
firewall = "nft"
state_file = "bans.json"
[policy.concurrent]
critical = ["nuke"]
[policy.call_rate]
warning = ["alert", "alert"]
`, strings.Join([]string{
		`mode: "active" is not one of observe, enforce`,
		`ami.address: "localhost" must be host:port or tls://host:port`,
		`ami.username must not be empty`,
		`ami.queue_size must be between 1024 and 16777216`,
		`log.level: "loud" is not one of debug, info, warn, error`,
		`metrics.listen: "9464" must be host:port`,
		`metrics.silence_alarm must be > 0`,
		`detector.prefix_guess.digits must be between 4 and 15`,
		`detector.prefix_guess.window must be > 0`,
		`allow.extensions: "bad name" is not an extension name`,
		`allow.networks[0]: "10.0.0.0/33" is not an IP address or CIDR network`,
		`response.firewall: "nft" is not one of iptables, dry-run`,
		`response.state_file: "bans.json" must be an absolute path`,
		`response.retry_max must be between 1 and 100`,
		`policy.call_rate.warning: "alert" is listed twice`,
		`policy.concurrent.critical: "nuke" is not one of alert, hangup, rotate_secret, block_ip`,
	}, "\n")},
}

func TestBadConfigs(t *testing.T) {
	for _, tc := range badConfigs {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.toml))
			if err == nil {
				t.Fatalf("Parse succeeded, want error %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
			if c != nil {
				t.Errorf("Parse returned a Config with its error")
			}
		})
	}
}

func TestGoodValues(t *testing.T) {
	for _, s := range []string{
		`ami.address = "[2001:db8::1]:5038"`,
		`ami.address = "pbx.example.net:5038"`,
		`ami.address = "tls://pbx.example.net:5039"`,
		`ami.address = "tls://[2001:db8::1]:5039"`,
		"[ami]\naddress = \"tls://127.0.0.1:5039\"\ntls_ca = \"/etc/astguard/ca.pem\"\ntls_server_name = \"pbx.example.net\"",
		`ami.auth = "plain"`,
		`ami.auth = "md5"`,
		`ami.reconnect_max = "1s"`, // below reconnect_interval: the interval is the only pause
		`ami.keepalive = "1m"`,
		`ami.username = "guard user"`,
		`ami.secret = "p@ss w\tord"`,
		`log.level = "debug"`,
		`log.level = "warn"`,
		`log.level = "error"`,
		`metrics.listen = "127.0.0.1:9464"`,
		`metrics.listen = "[::1]:9464"`,
		`metrics.listen = "0.0.0.0:9464"`,
		`metrics.listen = "localhost:9464"`,
		`metrics.listen = ""`,
		`metrics.silence_alarm = "1s"`,
		`detector.call_rate.burst_warning = 0`, // warning disabled: no order check
		"[detector.concurrent]\nwarning = 8\ncritical = 0",
		"[detector.concurrent]\nwarning = 0\ncritical = 0",
		`detector.prefix_guess.digits = 4`,
		`detector.prefix_guess.digits = 15`,
		"[detector.international]\naccess_codes = []\nwarning = 0\ncritical = 0\nhigh_risk_warning = 0\nhigh_risk_critical = 0",
		`detector.international.access_codes = ["+", "0011", "810"]`,
		`detector.international.outside_line = "9"`,
		`detector.international.high_risk_countries = ["1", "123456"]`,
		// A disabled rule's window does not bound idle_expiry.
		"detector.idle_expiry = \"1m\"\n[detector.prefix_guess]\nwarning = 0\ncritical = 0\n[detector.international]\nwarning = 0\ncritical = 0\nhigh_risk_warning = 0\nhigh_risk_critical = 0",
		`allow.extensions = ["carrier", "SIP/trunk1", "PJSIP/trunk-1", "IAX2/gw_2"]`,
		`allow.networks = ["192.0.2.0/24", "2001:db8::1", "10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104"]`,
		// Wide networks confirmed, however written.
		"[allow]\nnetworks = [\"0.0.0.0/0\", \"::/0\"]\nconfirm_wide = [\"::/0\", \"::ffff:0.0.0.0/96\"]",
		"[allow]\nconfirm_wide = [\"128.0.0.0/1\"]\n[response]\nnever_block = [\"128.0.0.0/1\"]",
		"[allow]\nwidest_ipv4 = 0\nwidest_ipv6 = 0\nnetworks = [\"0.0.0.0/0\", \"::/0\"]",
		"[allow]\nwidest_ipv4 = 32\nwidest_ipv6 = 128\nnetworks = [\"192.0.2.1\", \"2001:db8::1\"]",
		`allow.destinations = ["112", "911", "+4930"]`,
		`ami = {address = "127.0.0.1:5038", username = "guard"}`,
		`mode = "enforce"`,
		`mode = "observe"`,
		`ami.reconnect_interval = "1ms"`,
		`ami.action_timeout = "1m"`,
		`ami.queue_size = 1024`,
		`ami.queue_size = 16777216`,
		`response.firewall = "dry-run"`,
		`response.chain = "a"`,
		`response.chain = "ASTGUARD-ASTGUARD-ASTGUARD_X"`, // 28
		`response.chain = "input"`,                        // only the built-in spelling is reserved
		`response.chain = "guard-2"`,
		`response.ipv6 = false`,
		`response.firewall_match = "ipset"`,
		`response.firewall_match = "rules"`,
		`response.ipv6_prefix = 32`,
		`response.ipv6_prefix = 128`,
		`response.state_file = "/bans.json"`,
		`response.admin_socket = "/run/` + strings.Repeat("a", 102) + `"`, // 107 bytes
		`response.never_block = ["192.0.2.0/24", "2001:db8::1", "10.0.0.0/8", "::ffff:203.0.113.9"]`,
		`response.protect_previous_sources = "0s"`,
		`response.hangup_cause = 0`,
		`response.hangup_cause = 127`,
		`response.retry_max = 1`,
		`response.retry_max = 100`,
		`response.retry_backoff = "1ns"`,
		`response.incident_quiet = "5m"`, // the cooldown
		"detector.cooldown = \"1m\"\n[response]\nincident_quiet = \"1m\"",
		`secrets.store = "files"`,
		`secrets.store = "freepbx"`,
		"[secrets]\nstore = \"realtime\"\n[secrets.realtime]\ndsn = \"postgres://astguard@/asterisk?host=/run/postgresql\"",
		`secrets.realtime.dsn = "postgresql://astguard@127.0.0.1:5433/asterisk?sslmode=disable&connect_timeout=5"`,
		`secrets.realtime.dsn = "mysql://astguard@localhost/asterisk?socket=/run/mysqld/mysqld.sock"`,
		"[secrets.realtime]\ndsn = \"mysql://astguard@[::1]:3306/asterisk\"\npassword_file = \"/etc/astguard/rt\"\nps_auths = \"PS_auths_2\"\nauth_cache = \"auths.v-2\"",
		"[secrets.freepbx]\ndsn = \"mysql://astguard@10.0.0.5/asterisk\"\npassword_file = \"/etc/astguard/fp\"\nreload_command = [\"/usr/sbin/fwconsole\", \"reload\", \"--dont-ignore-warnings\"]\nreload_timeout = \"5m\"",
		// An empty list is allowed: no action.
		"[policy.call_rate]\nwarning = []\ncritical = []",
		`policy.new_source.critical = ["block_ip", "rotate_secret", "hangup", "alert"]`,
		`crowdsec.url = "https://lapi.example.net:8443/"`,
		`crowdsec.url = "http://[::1]:8080"`,
		`crowdsec.url = ""`,                               // off
		"[crowdsec]\npush = true\nmachine_id = \"pbx-1\"", // the password may come from the environment or a file
		`crowdsec.pull_interval = "1s"`,
		"[crowdsec]\nwidest_ipv4 = 0\nwidest_ipv6 = 128",
		`crowdsec.scenarios_containing = ["astguard/", "crowdsecurity/sip-bf"]`,
		`crowdsec.origins = ["crowdsec", "cscli", "astguard", "CAPI"]`,
		"",
	} {
		if _, err := Parse([]byte(s)); err != nil {
			t.Errorf("Parse(%q): %v", s, err)
		}
	}
}
