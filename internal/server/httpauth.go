package server

import (
	"html/template"
	"net/http"
	"time"

	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/internal/acl"
)

// tokenCookie carries a dashboard user's token after /login: browsers
// cannot send an Authorization header when they navigate.
const tokenCookie = "blixard_token"

// httpAuth guards the HTTP endpoint of a secure node: the health checks
// and the login page are open; everything else (metrics, the API, the
// dashboard) needs a token with the read capability, from
// "Authorization: Bearer" or the login cookie.
func (s *Server) httpAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			s.login(w, r)
			return
		}
		if acl.HTTPOpen(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		tok, fromCookie := "", false
		if v, ok := cutBearer(r.Header.Get("Authorization")); ok {
			tok = v
		} else if c, err := r.Cookie(tokenCookie); err == nil {
			tok, fromCookie = c.Value, true
		}
		p, err := s.httpPrincipal(r, tok)
		switch {
		case err == nil && p.Has(acl.CapRead):
			next.ServeHTTP(w, r)
			return
		case tok == "" && (r.URL.Path == "/" || fromCookie):
			// A browser without a token: send it to the login page.
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		case tok == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="blixard"`)
			plainHTTP(w, http.StatusUnauthorized, "this endpoint needs a token with the read capability: send 'Authorization: Bearer <token>' (an operator makes one with 'blixard token create --policy read')")
		case err != nil:
			w.Header().Set("WWW-Authenticate", `Bearer realm="blixard", error="invalid_token"`)
			plainHTTP(w, http.StatusUnauthorized, err.Error())
		default:
			plainHTTP(w, http.StatusForbidden, p.String()+" may not read this endpoint; it needs a token with the read capability (policies read, operator, management)")
		}
	})
}

// httpPrincipal checks a token presented over HTTP (no token: the error
// is nil and the principal holds nothing).
func (s *Server) httpPrincipal(r *http.Request, tok string) (acl.Principal, error) {
	var node uint64
	var client string
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && s.cfg.Identify != nil {
		node, client, _ = s.cfg.Identify(*r.TLS)
	}
	if tok == "" {
		return acl.Principal{}, nil
	}
	p, err := s.authz.tokenPrincipal(tok, node, client)
	if err != nil {
		return p, statusMessage(err)
	}
	return p, nil
}

type messageError string

func (e messageError) Error() string { return string(e) }

// statusMessage turns a gRPC status into a plain error of its message.
func statusMessage(err error) error { return messageError(status.Convert(err).Message()) }

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blixard — sign in</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>Blixard</h1>
<p>The dashboard needs a token with the <code>read</code> capability
(<code>blixard token create --policy read</code>).</p>
{{if .}}<p style="color: #b00"><strong>{{.}}</strong></p>{{end}}
<form method="post" action="/login">
<label>Token <input name="token" type="password" size="40" autocomplete="off" autofocus></label>
<button type="submit">Sign in</button>
</form></body></html>
`))

// login serves the sign-in form (GET) and checks a posted token (POST),
// which it keeps in an HttpOnly, Secure, SameSite=Strict cookie.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Type", "text/html; charset=utf-8")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		_ = loginPage.Execute(w, "")
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		tok := r.PostFormValue("token")
		p, err := s.httpPrincipal(r, tok)
		if err == nil && !p.Has(acl.CapRead) {
			err = messageError("this token may not read the cluster; it needs the read capability")
		}
		if tok == "" {
			err = messageError("paste a token")
		}
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			_ = loginPage.Execute(w, err.Error())
			return
		}
		http.SetCookie(w, &http.Cookie{
			Name: tokenCookie, Value: tok, Path: "/", HttpOnly: true, Secure: true,
			SameSite: http.SameSiteStrictMode, MaxAge: int((12 * time.Hour).Seconds()),
		})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	default:
		h.Set("Allow", "GET, HEAD, POST")
		plainHTTP(w, http.StatusMethodNotAllowed, "use GET or POST")
	}
}

func plainHTTP(w http.ResponseWriter, code int, line string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(line + "\n"))
}
