//go:build unix

package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// connFlags are the flags that say how to reach etcd. Their names,
// meanings, defaults and ETCDCTL_* variables are etcdctl's, so that a user
// of one knows the other.
type connFlags struct {
	endpoints          string
	dialTimeout        time.Duration
	commandTimeout     time.Duration
	cacert, cert, key  string
	insecureSkipVerify bool
	user, password     string
}

func isConnFlag(name string) bool {
	switch name {
	case "endpoints", "dial-timeout", "command-timeout", "cacert", "cert", "key",
		"insecure-skip-tls-verify", "user", "password":
		return true
	}
	return false
}

func addConnFlags(fs *pflag.FlagSet) *connFlags {
	c := &connFlags{endpoints: "127.0.0.1:2379", dialTimeout: 2 * time.Second, commandTimeout: 5 * time.Second}
	fs.StringVar(&c.endpoints, "endpoints", c.endpoints, "comma-separated etcd `endpoints` (host:port, http://host:port or https://host:port)")
	fs.Var(durationFlag{&c.dialTimeout}, "dial-timeout", "`time` allowed for authenticating (--user) when connecting; each request has --command-timeout")
	fs.Var(durationFlag{&c.commandTimeout}, "command-timeout", "`time` allowed for each request to etcd (not for waiting for the lock)")
	fs.StringVar(&c.cacert, "cacert", "", "verify the servers' TLS certificates with this CA bundle (PEM `file`)")
	fs.StringVar(&c.cert, "cert", "", "TLS client certificate (PEM `file`)")
	fs.StringVar(&c.key, "key", "", "TLS client key (PEM `file`)")
	fs.BoolVar(&c.insecureSkipVerify, "insecure-skip-tls-verify", false, "use TLS without checking the servers' certificates")
	fs.StringVar(&c.user, "user", "", "etcd user, as `name` or name:password")
	fs.StringVar(&c.password, "password", "", "etcd `password` (the user's name is then --user)")
	return c
}

// applyEnv sets, from ETCDCTL_<NAME> variables, the connection flags that
// were not given on the command line, except those in skip.
func (c *connFlags) applyEnv(fs *pflag.FlagSet, getenv func(string) string, skip ...string) error {
	given := make(map[string]bool)
	fs.Visit(func(f *pflag.Flag) { given[f.Name] = true })
	for _, s := range skip {
		given[s] = true
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || !isConnFlag(f.Name) || given[f.Name] {
			return
		}
		env := "ETCDCTL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				// The value's own complaint: the variable names the flag.
				if cause := errors.Unwrap(serr); cause != nil {
					serr = cause
				}
				err = usageErrorf("%s: %s=%q: %v", fs.Name(), env, v, serr)
			}
		}
	})
	return err
}

// config returns the etcd client configuration the flags describe.
func (c *connFlags) config() (clientv3.Config, error) {
	var eps []string
	for _, ep := range strings.Split(c.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return clientv3.Config{}, usageErrorf("no etcd endpoints: give --endpoints or ETCDCTL_ENDPOINTS")
	}
	cfg := clientv3.Config{
		Endpoints:   eps,
		DialTimeout: c.dialTimeout,
		// Notice a connection that went silent (a partition) within about
		// 15 s, and stay above etcd's default limit on client pings (one
		// per 5 s), beyond which it would close the connection.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	}

	secure := c.cacert != "" || c.cert != "" || c.key != "" || c.insecureSkipVerify
	for _, ep := range eps {
		secure = secure || strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://")
	}
	if secure {
		t, err := c.tlsConfig()
		if err != nil {
			return cfg, err
		}
		cfg.TLS = t
	}

	switch name, pass, hasPass := strings.Cut(c.user, ":"); {
	case c.user == "" && c.password != "":
		return cfg, usageErrorf("--password needs --user")
	case c.user == "":
	case c.password != "" && hasPass:
		return cfg, usageErrorf("give the password either in --user name:password or in --password, not both")
	case c.password != "":
		cfg.Username, cfg.Password = c.user, c.password
	case !hasPass:
		return cfg, usageErrorf("--user %s has no password: give --user %s:PASSWORD, --password or ETCDCTL_PASSWORD", name, name)
	default:
		cfg.Username, cfg.Password = name, pass
	}
	return cfg, nil
}

// tlsConfig is the TLS configuration of --cacert, --cert, --key and
// --insecure-skip-tls-verify, built by the etcd client's own TLSInfo, as
// etcdctl builds it. With none of them (an https:// endpoint alone) it
// verifies the servers against the system's roots.
func (c *connFlags) tlsConfig() (*tls.Config, error) {
	if (c.cert == "") != (c.key == "") {
		return nil, usageErrorf("--cert and --key go together")
	}
	info := transport.TLSInfo{
		CertFile:           c.cert,
		KeyFile:            c.key,
		TrustedCAFile:      c.cacert,
		InsecureSkipVerify: c.insecureSkipVerify,
		Logger:             zap.NewNop(),
	}
	t, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("microlock: TLS files (--cacert, --cert, --key): %w", err)
	}
	// TLSInfo reads a CA file without a certificate in it as an empty
	// pool, which would fail every handshake with an unknown authority.
	if c.cacert != "" && t.RootCAs.Equal(x509.NewCertPool()) {
		return nil, fmt.Errorf("microlock: --cacert %s: no PEM certificate in it", c.cacert)
	}
	// TLSInfo sets the minimum version only along with a certificate.
	t.MinVersion = max(t.MinVersion, tls.VersionTLS12)
	return t, nil
}

// client connects to etcd as the flags say. The caller closes it.
func (c *connFlags) client() (*clientv3.Client, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, etcdError(fmt.Errorf("microlock: connecting to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err))
	}
	return cli, nil
}
