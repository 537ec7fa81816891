// yolo.h: placeholder
#pragma once
