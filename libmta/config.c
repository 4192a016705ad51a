typedef int mta_stub_config;
