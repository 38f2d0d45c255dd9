package proxy

import (
	"context"
	"net"
	"syscall"
)

// PeerCred is a unix socket peer's identity from SO_PEERCRED: set by the
// kernel, so unlike a header it cannot be forged by the client.
type PeerCred struct{ UID, GID, PID int }

type peerKeyT struct{}

// ConnContext is an http.Server ConnContext that records unix peer creds.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	var serr error
	raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if serr != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKeyT{}, PeerCred{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)})
}

func peerFrom(ctx context.Context) (PeerCred, bool) {
	pc, ok := ctx.Value(peerKeyT{}).(PeerCred)
	return pc, ok
}
