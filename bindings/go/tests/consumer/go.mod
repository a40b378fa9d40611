module example.com/consumer

go 1.19

require m2mpsk.org/m2mpsk v0.0.0

// consumer.sh appends: replace m2mpsk.org/m2mpsk => <the module's directory>
