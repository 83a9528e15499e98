// Command grpc-go-probe is the grpc-go peer that `sterling bench-hop --grpc-go ADDR` measures in
// the same run as bare tonic and the template's stack, so each figure is a ratio measured side by
// side rather than compared against a number taken on another machine or day.
//
// It serves sterling.testing.v1.Probe (proto/sterling/testing/v1/probe.proto) with grpc-go's
// default settings and no TLS. There is no protoc here, so the service is registered with a
// hand-written grpc.ServiceDesc, messages travel as raw []byte through a pass-through codec named
// "proto", and ProbeRequest/ProbeReply are decoded and encoded with protowire:
//
//	message ProbeRequest { string payload = 1; string downstream = 2; }
//	message ProbeReply   { string instance = 1; string payload = 2; int64 deadline_us = 3; }
//
// Read and Write both answer ProbeReply{instance: "grpc-go", payload: <request payload>}
// (deadline_us is 0 and so omitted). A malformed request fails with InvalidArgument.
//
// Usage: grpc-go-probe [-listen 127.0.0.1:0]. After binding it prints one line,
// "listening <host:port>", then serves until SIGTERM or SIGINT and stops gracefully.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	serviceName = "sterling.testing.v1.Probe"
	instance    = "grpc-go"
)

// rawCodec passes []byte messages through unchanged. It is named "proto" so the content-type on
// the wire stays application/grpc+proto, as with generated code. It is only installed with
// grpc.ForceServerCodecV2 / grpc.ForceCodecV2, never registered globally.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case []byte:
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	default:
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	// data is freed once Unmarshal returns, so take a copy.
	*m = data.Materialize()
	return nil
}

// probeRequest is the decoded sterling.testing.v1.ProbeRequest.
type probeRequest struct {
	payload    string
	downstream string
}

// decodeRequest parses a ProbeRequest as protobuf-go would: unknown fields (and known fields with
// an unexpected wire type) are skipped, the last occurrence of a field wins, and proto3 strings
// must be valid UTF-8.
func decodeRequest(b []byte) (probeRequest, error) {
	var req probeRequest
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return req, protowire.ParseError(n)
		}
		b = b[n:]
		if (num == 1 || num == 2) && typ == protowire.BytesType {
			v, n := protowire.ConsumeString(b)
			if n < 0 {
				return req, protowire.ParseError(n)
			}
			if !utf8.ValidString(v) {
				return req, fmt.Errorf("field %d: string is not valid UTF-8", num)
			}
			if num == 1 {
				req.payload = v
			} else {
				req.downstream = v
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return req, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return req, nil
}

// encodeReply encodes a ProbeReply, omitting zero-valued fields as proto3 does.
func encodeReply(instance, payload string, deadlineUs int64) []byte {
	size := 0
	if instance != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(instance))
	}
	if payload != "" {
		size += protowire.SizeTag(2) + protowire.SizeBytes(len(payload))
	}
	if deadlineUs != 0 {
		size += protowire.SizeTag(3) + protowire.SizeVarint(uint64(deadlineUs))
	}
	b := make([]byte, 0, size)
	if instance != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, instance)
	}
	if payload != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, payload)
	}
	if deadlineUs != 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(deadlineUs))
	}
	return b
}

// probeServer is the handler type of the hand-written ServiceDesc.
type probeServer interface {
	probe(ctx context.Context, req []byte) ([]byte, error)
}

type probe struct{}

func (probe) probe(_ context.Context, in []byte) ([]byte, error) {
	req, err := decodeRequest(in)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "malformed ProbeRequest: %v", err)
	}
	return encodeReply(instance, req.payload, 0), nil
}

// unaryHandler has the shape protoc-gen-go-grpc generates for a unary method.
func unaryHandler(method string) grpc.MethodHandler {
	fullMethod := "/" + serviceName + "/" + method
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		if interceptor == nil {
			return srv.(probeServer).probe(ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod}
		handler := func(ctx context.Context, req any) (any, error) {
			return srv.(probeServer).probe(ctx, req.([]byte))
		}
		return interceptor(ctx, in, info, handler)
	}
}

var probeServiceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*probeServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Read", Handler: unaryHandler("Read")},
		{MethodName: "Write", Handler: unaryHandler("Write")},
	},
	Streams:  []grpc.StreamDesc{},
	Metadata: "sterling/testing/v1/probe.proto",
}

// newServer returns a grpc-go server with default settings, apart from the pass-through codec,
// serving Probe.
func newServer() *grpc.Server {
	s := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}))
	s.RegisterService(&probeServiceDesc, probe{})
	return s
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (host:port)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("grpc-go-probe: ")

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	srv := newServer()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.GracefulStop()
	}()

	// os.Stdout is unbuffered: this single write reaches the pipe before Serve starts.
	if _, err := fmt.Fprintf(os.Stdout, "listening %s\n", lis.Addr()); err != nil {
		log.Fatalf("write stdout: %v", err)
	}
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
