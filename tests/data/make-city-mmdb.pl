#!/usr/bin/perl
# Writes a small MMDB file in MaxMind's GeoIP2/GeoLite2 City layout, so the
# tests can check the City schema without a licensed database.
# usage: make-city-mmdb.pl OUT.mmdb
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;

my $out = shift or die "usage: $0 OUT.mmdb\n";
my %types = (
    city         => 'map', continent => 'map', country => 'map', location => 'map',
    postal       => 'map', subdivisions => ['array', 'map'], names => 'map',
    code         => 'utf8_string', iso_code => 'utf8_string', en => 'utf8_string',
    fr           => 'utf8_string', geoname_id => 'uint32', latitude => 'double',
    longitude    => 'double', time_zone => 'utf8_string', accuracy_radius => 'uint16',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version            => 6,
    record_size           => 28,
    database_type         => 'GeoIP2-City',
    languages             => ['en', 'fr'],
    description           => { en => 'sillage test City database' },
    map_key_type_callback => sub { $types{ $_[0] } },
    remove_reserved_networks => 0,
);
$tree->insert_network('81.2.69.0/24', {
    city         => { geoname_id => 2643743, names => { en => 'London', fr => 'Londres' } },
    continent    => { code => 'EU', names => { en => 'Europe' } },
    country      => { iso_code => 'GB', names => { en => 'United Kingdom', fr => 'Royaume-Uni' } },
    location     => { latitude => 51.5142, longitude => -0.0931, time_zone => 'Europe/London', accuracy_radius => 10 },
    postal       => { code => 'EC2V' },
    subdivisions => [ { iso_code => 'ENG', names => { en => 'England' } } ],
});
$tree->insert_network('2a02:cf40::/32', {
    city         => { names => { en => 'Paris' } },
    country      => { iso_code => 'FR', names => { en => 'France' } },
    location     => { latitude => 48.8566, longitude => 2.3522, time_zone => 'Europe/Paris' },
    subdivisions => [ { iso_code => 'IDF', names => { en => 'Ile-de-France' } } ],
});
# the integration tests' loopback clients
$tree->insert_network('127.0.0.0/8', {
    city     => { names => { en => 'Loopback City' } },
    country  => { iso_code => 'ZZ', names => { en => 'Loopland' } },
    location => { latitude => 1.5, longitude => 2.5, time_zone => 'Etc/UTC' },
});
open my $fh, '>:raw', $out or die "$out: $!\n";
$tree->write_tree($fh);
close $fh or die "$out: $!\n";
