package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ResolveNodeFiles finds the files of node id in the TLS directory dir (for
// 'blixard node --tls-dir D --id N'): D/ca.crt, and D/node-N.crt and
// D/node-N.key if the certificate is there, else D/node.crt and D/node.key.
func ResolveNodeFiles(dir string, id uint64) (ca, cert, key string, err error) {
	ca = filepath.Join(dir, CACertFile)
	idCert, idKey := filepath.Join(dir, NodeCertFile(id)), filepath.Join(dir, NodeKeyFile(id))
	plainCert, plainKey := filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	howTo := fmt.Sprintf(`make them with "blixard tls cert --dir %s --node %d" (after "blixard tls init --dir %s" once per cluster), or copy %s, %s and %s here from the directory that holds the CA`,
		dir, id, dir, CACertFile, NodeCertFile(id), NodeKeyFile(id))
	caOK, err := exists(ca)
	if err != nil {
		return "", "", "", err
	}
	cert, key = idCert, idKey
	certOK, err := exists(idCert)
	if err != nil {
		return "", "", "", err
	}
	if !certOK {
		if certOK, err = exists(plainCert); err != nil {
			return "", "", "", err
		}
		cert, key = plainCert, plainKey
	}
	if !caOK || !certOK {
		var missing []string
		if !caOK {
			missing = append(missing, ca)
		}
		if !certOK {
			missing = append(missing, idCert+" (or "+plainCert+")")
		}
		return "", "", "", fmt.Errorf("TLS files of node %d not found: no %s; %s", id, strings.Join(missing, " and no "), howTo)
	}
	keyOK, err := exists(key)
	if err != nil {
		return "", "", "", err
	}
	if !keyOK {
		return "", "", "", fmt.Errorf("%s has no key %s next to it; %s", cert, key, howTo)
	}
	return ca, cert, key, nil
}

// ResolveClientFiles finds a client's files in the TLS directory dir (for
// a client's --tls-dir D): D/ca.crt, and D/client.crt and D/client.key if
// the certificate is there, else the single D/client-*.crt and its key.
func ResolveClientFiles(dir string) (ca, cert, key string, err error) {
	ca = filepath.Join(dir, CACertFile)
	howTo := fmt.Sprintf(`run "blixard tls cert --dir %s --client NAME" where the CA is`, dir)
	caOK, err := exists(ca)
	if err != nil {
		return "", "", "", err
	}
	if !caOK {
		return "", "", "", fmt.Errorf("no CA certificate %s; copy the cluster's %s there (made by 'blixard tls init'), and a client certificate: %s", ca, CACertFile, howTo)
	}
	cert, key = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	certOK, err := exists(cert)
	if err != nil {
		return "", "", "", err
	}
	if !certOK {
		ents, lerr := os.ReadDir(dir)
		if lerr != nil {
			return "", "", "", fmt.Errorf("list client certificates in %s: %w", dir, lerr)
		}
		var matches []string // ReadDir sorts by name
		for _, e := range ents {
			if n := e.Name(); strings.HasPrefix(n, "client-") && strings.HasSuffix(n, ".crt") && len(n) > len("client-.crt") {
				matches = append(matches, filepath.Join(dir, n))
			}
		}
		switch len(matches) {
		case 0:
			return "", "", "", fmt.Errorf("no client certificate in %s (looked for client.crt and client-*.crt); %s", dir, howTo)
		case 1:
			cert = matches[0]
			key = strings.TrimSuffix(cert, ".crt") + ".key"
		default:
			names := make([]string, len(matches))
			for i, m := range matches {
				names[i] = filepath.Base(m)
			}
			return "", "", "", fmt.Errorf("several client certificates in %s (%s); pass --cert and --key", dir, strings.Join(names, ", "))
		}
	}
	keyOK, err := exists(key)
	if err != nil {
		return "", "", "", err
	}
	if !keyOK {
		return "", "", "", fmt.Errorf("%s has no key %s next to it; copy the key issued with it, or %s", cert, key, howTo)
	}
	return ca, cert, key, nil
}

// exists reports whether p exists; errors other than "does not exist"
// (permissions) are returned.
func exists(p string) (bool, error) {
	_, err := os.Stat(p)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("check %s: %w", p, err)
}
