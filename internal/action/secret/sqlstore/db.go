// Package sqlstore holds the secret stores that live in a database:
// FreePBX's (its sip table, then its reload) and Asterisk realtime's
// (ps_auths, sippeers), in MySQL/MariaDB (github.com/go-sql-driver/mysql)
// or PostgreSQL (github.com/jackc/pgx/v5).
//
// What reaches the SQL text is the configuration's table names, checked
// to be plain identifiers and quoted; every value (an extension's name,
// an auth's id, a secret) goes as a placeholder's argument. A secret is
// compared, never put into an error or a text.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/astguard/astguard/internal/config"
)

// DB is a database the guard connects to itself. Connecting waits for the
// first query: opening one costs nothing, and observe mode never uses it.
type DB struct {
	db     *sql.DB
	driver string
}

// dialTimeout bounds connecting to the database.
const dialTimeout = 5 * time.Second

// Open returns the database of d, with password (never logged).
func Open(d config.DSN, password config.Secret) (*DB, error) {
	out := &DB{driver: d.Driver}
	switch d.Driver {
	case config.DriverMySQL:
		c := mysql.NewConfig()
		c.User, c.Passwd, c.DBName = d.User, password.Reveal(), d.Name
		c.Net, c.Addr = "tcp", net.JoinHostPort(d.Host, strconv.Itoa(d.Port))
		if d.Socket != "" {
			c.Net, c.Addr = "unix", d.Socket
		}
		// RowsAffected counts the rows matched, not only those changed.
		c.ClientFoundRows = true
		c.Timeout = dialTimeout
		// The driver's own log goes to stderr; its errors come back to
		// the guard, which says what they mean.
		c.Logger = &mysql.NopLogger{}
		conn, err := mysql.NewConnector(c)
		if err != nil {
			return nil, err
		}
		out.db = sql.OpenDB(conn)
	case config.DriverPostgres:
		c, err := pgx.ParseConfig(d.URL)
		if err != nil {
			return nil, err
		}
		c.Password = password.Reveal()
		if c.ConnectTimeout == 0 {
			c.ConnectTimeout = dialTimeout
		}
		out.db = stdlib.OpenDB(*c)
	default:
		return nil, errors.New("unknown database driver " + d.Driver)
	}
	// Rotations are rare: a few connections, none kept idle for long.
	out.db.SetMaxOpenConns(4)
	out.db.SetMaxIdleConns(2)
	out.db.SetConnMaxIdleTime(time.Minute)
	return out, nil
}

// Close closes the database's connections.
func (d *DB) Close() error { return d.db.Close() }

// sql returns query with its placeholders written for the driver: "?" as
// given for MySQL, "$1", "$2" ... for PostgreSQL, and each {name} replaced
// by the quoted identifier idents[name] (a table or column name of the
// configuration, checked to be a plain identifier).
func (d *DB) sql(query string, idents map[string]string) string {
	for k, v := range idents {
		q := "`" + v + "`"
		if d.driver == config.DriverPostgres {
			q = `"` + v + `"`
		}
		query = strings.ReplaceAll(query, "{"+k+"}", q)
	}
	if d.driver != config.DriverPostgres {
		return query
	}
	var b strings.Builder
	n := 0
	for i := range len(query) {
		if query[i] == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// dbError is a failure of the database, saying what the guard was doing.
// Temporary tells action.Retryable whether a retry may help: not for a
// refused login or privilege, a missing table or column (the
// configuration or the grants are wrong); yes for the rest (the server
// is down, the connection dropped).
type dbError struct {
	what      string
	err       error
	temporary bool
}

func (e *dbError) Error() string   { return e.what + ": " + e.err.Error() }
func (e *dbError) Unwrap() error   { return e.err }
func (e *dbError) Temporary() bool { return e.temporary }

// dbErr wraps err, a database error met while doing what.
func dbErr(what string, err error) error {
	return &dbError{what: what, err: err, temporary: !permanentDBError(err)}
}

// permanentDBError reports whether err is one a retry cannot fix.
func permanentDBError(err error) bool {
	if errors.Is(err, context.Canceled) {
		return true
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1044, 1045, // access denied to the database, for the user
			1049,             // unknown database
			1054,             // unknown column
			1142, 1143, 1227, // command or column denied, no privilege
			1146: // no such table
			return true
		}
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 28: invalid authorization; 42: syntax error or access rule
		// violation (a missing table, column or privilege); 3D000: no
		// such database.
		return strings.HasPrefix(pe.Code, "28") || strings.HasPrefix(pe.Code, "42") || pe.Code == "3D000"
	}
	return false
}
