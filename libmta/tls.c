typedef int mta_stub_tls;
