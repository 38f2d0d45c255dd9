package config

import (
	"context"
	"errors"
	"io"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// OpenEtcdClient connects to c's state etcd, or starts the embedded one, for
// tools that read and write the raw records (sealrun backup store|load).
// Closing the closer closes the client and any embedded etcd.
func OpenEtcdClient(ctx context.Context, c *Config) (*clientv3.Client, io.Closer, error) {
	if c.State.Backend != "etcd" {
		return nil, nil, errors.New("state.backend is not etcd: only an etcd store can be backed up or loaded")
	}
	client, closers, err := openEtcd(ctx, c.State.Etcd, nil)
	cl := closeAll(closers)
	if err != nil {
		_ = cl.Close()
		return nil, nil, err
	}
	return client, cl, nil
}

// closeAll closes in reverse start order.
type closeAll []io.Closer

func (cs closeAll) Close() error {
	var errs []error
	for i := len(cs) - 1; i >= 0; i-- {
		errs = append(errs, cs[i].Close())
	}
	return errors.Join(errs...)
}
